"""Parity of ONNX exports of trained students with the models as trained: top-1 agreement (all
images and margin-aware, the gate's figure), and top-1 accuracy of both, on CIFAR-10 JPEG test
images, with the residual stream kept float and as int8. Also the same after `snap_biases`: the
snapped model is then a (slightly) different model, so its own top-1 is given too.

Students are the label-free SQAKD seed-0 runs of `cifar_table.py` (``--runs``, ``--pattern``), or,
with ``--train-subset N``, students trained here on N CIFAR-10 JPEG training images for one epoch
from the shared pretrained teacher (a smaller budget than that table: a quick recheck).

    python benchmarks/export_parity.py                      # writes benchmarks/results/export_parity.json
    python benchmarks/export_parity.py --train-subset 1000 --students ewgs:2 lsq:8 --runs runs/bench/parity
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path
from typing import Any

import torch
from _common import ResultLog, hardware, timed_run

from qdistill import BatchLoader, QuantConfig, RunConfig, TrainConfig, load_dataset
from qdistill.experiment import DataConfig, MethodConfig, ModelConfig, load_run
from qdistill.export import export_onnx, snap_biases
from qdistill.export.parity import torch_logits

CIFAR = "../shared/data/cifar10-jpeg.tar.gz"
TEACHER = "../shared/teachers/resnet20-12fca82f.th"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def train_students(runs: Path, students: list[str], subset: int, threads: int) -> None:
    """Label-free SQAKD students (``quantizer:bits``) of the shared teacher, one epoch on ``subset`` images."""
    data = DataConfig(format="imagefolder", root=CIFAR, subset=subset, test_subset=1000, mean=MEAN, std=STD)
    train = TrainConfig(epochs=1, lr=5e-4, progress=False, device="cpu", hessian_probes=1, seed=0)
    for spec in students:
        quantizer, bits = spec.split(":")
        out = runs / f"sqakd-{quantizer}-w{bits}a{bits}-s0"
        if not (out / "best.pt").exists():
            quant = QuantConfig(method=quantizer, weight_bits=int(bits), act_bits=int(bits))
            cfg = RunConfig(
                model=ModelConfig("resnet20", pretrained=TEACHER),
                data=data,
                quant=quant,
                method=MethodConfig("sqakd"),
                train=train,
                out=str(out),
            )
            print(out.name, "trained in", timed_run(cfg)["seconds"], "s", flush=True)


def parity_row(
    model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, residual: str, out: Path, threads: int
) -> dict[str, Any]:
    """Export ``model`` as trained and after `snap_biases` (a copy; the file at ``out`` is the
    snapped model's export); agreement and top-1 of both."""
    kw = {"calib": images, "labels": labels, "residual": residual, "min_agreement": 0, "threads": threads}
    trained = export_onnx(model, images[:8], out, **kw)["parity"]
    snapped_model = copy.deepcopy(model)
    shift = max(snap_biases(snapped_model, images[:8]).values(), default=0.0)
    snapped = export_onnx(snapped_model, images[:8], out, **kw)["parity"]
    top1_snapped = float((torch_logits(snapped_model, images).argmax(1) == labels.numpy()).mean() * 100)
    return {
        "agreement": trained["top1_agreement"],
        "agreement_decisive": trained["top1_agreement_decisive"],
        "decisive_images": trained["decisive_images"],
        "max_abs_logit_diff": trained["max_abs_logit_diff"],
        "top1_trained": trained["top1_trained"],
        "top1_exported": trained["top1_exported"],
        "snapped": {
            "max_bias_shift_units": shift,
            "agreement": snapped["top1_agreement"],
            "agreement_decisive": snapped["top1_agreement_decisive"],
            "top1_snapped_model": top1_snapped,
            "top1_exported": snapped["top1_exported"],
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="runs/bench/cifar")
    p.add_argument("--pattern", default="sqakd-*-s0")
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--train-subset", type=int, default=None, help="train the --students here on this many images")
    p.add_argument("--students", nargs="+", default=["ewgs:2", "lsq:8"], help="quantizer:bits, with --train-subset")
    p.add_argument("--name", default="export_parity", help="result file under benchmarks/results")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.train_subset:
        train_students(Path(args.runs), args.students, args.train_subset, args.threads)
    splits = load_dataset("imagefolder", CIFAR, mean=MEAN, std=STD)
    torch.manual_seed(0)
    images, labels = next(iter(BatchLoader(splits.test, args.images, mean=splits.mean, std=splits.std, shuffle=True)))
    students = (
        f"{args.train_subset} JPEG train images, 1 epoch, from the shared teacher (not fine-tuned)"
        if args.train_subset
        else "cifar_table.py runs"
    )
    log = ResultLog(
        args.name,
        {
            "images": args.images,
            "data": "CIFAR-10 JPEG test split (random subset, seed 0)",
            "students": students,
            "runs": args.runs,
            "hardware": hardware(),
        },
    )
    log.save()
    out = Path(tempfile.mkdtemp()) / "m.onnx"
    for run in sorted(Path(args.runs).glob(args.pattern)):
        for residual in ("float", "int8"):
            key = f"{run.name}-{residual}"
            if log.has(key):
                continue
            row = {
                "key": key,
                "run": run.name,
                "residual": residual,
                **parity_row(load_run(run)[0], images, labels, residual, out, args.threads),
            }
            log.add(row)
            print(key, row["agreement"], row["agreement_decisive"], row["snapped"]["agreement"], flush=True)


if __name__ == "__main__":
    main()

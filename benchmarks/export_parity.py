"""Parity of ONNX exports of trained students: top-1 agreement with the trained PyTorch model and
top-1 accuracy of both, on CIFAR-10 JPEG test images. Uses the runs of `cifar_table.py` (run that
first), seed 0 of every label-free SQAKD student, with the residual stream kept float and as int8.

    python benchmarks/export_parity.py           # writes benchmarks/results/export_parity.json
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from _common import ResultLog, hardware
from qdistill import BatchLoader, load_dataset
from qdistill.experiment import load_run
from qdistill.export import export_onnx

CIFAR = "../shared/data/cifar10-jpeg.tar.gz"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="runs/bench/cifar")
    p.add_argument("--pattern", default="sqakd-*-s0")
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    splits = load_dataset("imagefolder", CIFAR, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    torch.manual_seed(0)
    images, labels = next(iter(BatchLoader(splits.test, args.images, mean=splits.mean, std=splits.std, shuffle=True)))
    log = ResultLog("export_parity", {"images": args.images, "data": "CIFAR-10 JPEG test split (random subset, seed 0)",
                                      "hardware": hardware()})  # fmt: skip
    log.save()
    out = Path(tempfile.mkdtemp()) / "m.onnx"
    for run in sorted(Path(args.runs).glob(args.pattern)):
        for residual in ("float", "int8"):
            key = f"{run.name}-{residual}"
            if log.has(key):
                continue
            model = load_run(run)[0]
            p_ = export_onnx(model, images[:8], out, calib=images, labels=labels, residual=residual, min_agreement=0,
                             threads=args.threads)["parity"]  # fmt: skip
            row = {"key": key, "run": run.name, "residual": residual, "agreement": p_["top1_agreement"],
                   "max_abs_logit_diff": p_["max_abs_logit_diff"], "agreement_unsnapped": p_["unsnapped"]["top1_agreement"],
                   "top1_trained": p_["top1_trained"], "top1_exported": p_["top1_exported"]}  # fmt: skip
            log.add(row)
            print(key, row["agreement"], row["agreement_unsnapped"], row["top1_trained"], row["top1_exported"], flush=True)


if __name__ == "__main__":
    main()

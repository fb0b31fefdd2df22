"""Residual sums quantized in training (`QuantConfig(residual_bits=8)`) against kept float, on
CIFAR-10 JPEG ResNet-20 label-free SQAKD students: test top-1, ONNX parity with the trained model
and after `snap_biases` (as `export_parity.py`), and ONNX Runtime throughput against FP32 at
batch 64, measured in the same run.

Students without residual quantizers are the `cifar_table.py` runs (same teacher, images, epochs
and seed; run that first); the ones with them are trained here on the same budget. Writes
benchmarks/results/residual_quant.json.

    python benchmarks/residual_quant.py
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import onnx
import torch
from _common import ResultLog, hardware, timed_run
from export_parity import parity_row

from qdistill import BatchLoader, QuantConfig, RunConfig, TrainConfig, load_dataset
from qdistill.experiment import DataConfig, MethodConfig, ModelConfig, load_run
from qdistill.export.bench import compare
from qdistill.export.graph import build_onnx
from qdistill.export.onnx import float_twin

ROOT = "../shared/data/cifar10-jpeg.tar.gz"
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
STUDENTS = (("lsq", 8), ("ewgs", 4), ("ewgs", 2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cifar-runs", default="runs/bench/cifar")
    p.add_argument("--out", default="runs/bench/residual")
    p.add_argument("--subset", type=int, default=4000)
    p.add_argument("--test-subset", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--images", type=int, default=1000, help="parity images")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seconds", type=float, default=1.0, help="time per speed measurement")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    log = ResultLog(
        "residual_quant",
        {
            "budget": f"as cifar_table.py: {args.subset} train images, {args.epochs} epoch(s), "
            f"Adam 5e-4, {args.test_subset} test images",
            "hardware": hardware(),
        },
    )
    log.save()
    data = DataConfig(
        format="imagefolder", root=ROOT, subset=args.subset, test_subset=args.test_subset, mean=MEAN, std=STD
    )
    model = ModelConfig("resnet20", pretrained=f"{args.cifar_runs}/teacher")
    train = TrainConfig(epochs=args.epochs, lr=5e-4, progress=False, device="cpu", hessian_probes=1, seed=0)
    splits = load_dataset("imagefolder", ROOT, mean=MEAN, std=STD)
    torch.manual_seed(0)
    images, labels = next(iter(BatchLoader(splits.test, args.images, mean=splits.mean, std=splits.std, shuffle=True)))
    tmp = Path(tempfile.mkdtemp())
    for quantizer, bits in STUDENTS:
        for residual_bits in (None, 8):
            name = f"sqakd-{quantizer}-w{bits}a{bits}-s0"
            run = (
                Path(args.cifar_runs, name) if residual_bits is None else Path(args.out, name.replace("-s0", "-r8-s0"))
            )
            key = run.name
            if not (run / "best.pt").exists():
                quant = QuantConfig(method=quantizer, weight_bits=bits, act_bits=bits, residual_bits=residual_bits)
                cfg = RunConfig(
                    model=model, data=data, quant=quant, method=MethodConfig("sqakd"), train=train, out=str(run)
                )
                timed_run(cfg)
            if log.has(key):
                continue
            student = load_run(run)[0]
            top1 = json.loads((run / "results.json").read_text()).get("test_top1")
            row = {"key": key, "quantizer": quantizer, "bits": bits, "residual_bits": residual_bits, "test_top1": top1}
            modes = ("float",) if residual_bits else ("float", "int8")
            fp32 = tmp / "fp32.onnx"
            onnx.save(build_onnx(float_twin(student), images[:1]).model, str(fp32))
            for mode in modes:
                parity = parity_row(student, images, labels, mode, tmp / "q.onnx", args.threads)
                speed = compare(fp32, tmp / "q.onnx", (3, 32, 32), threads=2, seconds=args.seconds, batches=(64,))
                ratio = next(r["ratio_vs_fp32"] for r in speed if r["format"] != "fp32")
                row[f"export_{mode}"] = {**parity, "speedup_b64": ratio}
            log.add(row)
            print(row, flush=True)


if __name__ == "__main__":
    main()

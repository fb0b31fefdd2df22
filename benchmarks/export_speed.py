"""FP32 vs quantized ONNX speed in ONNX Runtime: ResNet-20 (32x32) and ResNet-18 (64x64).

    python benchmarks/export_speed.py [--threads 2] [--seconds 2] [--out benchmarks/export_speed.json]

Each model is exported from the same weights as its float twin and as W8A8 LSQ QDQ (per-channel
int8 weights) three ways: residual sums kept float as in the papers (exact, slow), quantized to
uint8 after training (`--residual int8`: fast, but rounding the model never saw), and quantized
during training (`QuantConfig(residual_bits=8)`: fast and exact), the last also as its ONNX Runtime
build with the residual stream kept channels-last (`export_onnx(ort_build=True)`). FP32 and quantized run in the
same process with the same pinned thread count, alternately, and the ratio is taken from that
same run. Weights are random (calibrated on random images): speed does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from dataclasses import replace
from pathlib import Path

import onnx
import onnxruntime as ort
import torch

import qdistill
from qdistill import QuantConfig
from qdistill.export.bench import compare
from qdistill.export.graph import build_onnx
from qdistill.export.onnx import float_twin
from qdistill.export.ort_layout import ort_optimized
from qdistill.export.residual import quantize_float_tensors

MODELS = (("resnet20", 32), ("resnet18", 64))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    p.add_argument("--out", default="benchmarks/export_speed.json")
    args = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    print(f"onnxruntime {ort.__version__}, {args.threads} intra-op threads (pinned), cpu count {os.cpu_count()}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, size in MODELS:
            teacher = qdistill.create_model(name).eval()
            x = torch.randn(64, 3, size, size)
            cfg = QuantConfig(method="lsq", weight_bits=8, act_bits=8, per_channel=True)
            student = qdistill.make_student(teacher, cfg, x)
            fp32 = Path(tmp, f"{name}.fp32.onnx")
            onnx.save(build_onnx(float_twin(student), x[:1]).model, str(fp32))
            for residual in ("float", "int8", "8-bit trained", "8-bit trained, ORT build"):
                if residual.startswith("8-bit trained"):
                    trained = qdistill.make_student(teacher, replace(cfg, residual_bits=8), x)
                    trained.load_state_dict(student.state_dict(), strict=False)  # same weights
                    model = build_onnx(trained.eval(), x[:1]).model
                else:
                    model = build_onnx(student.eval(), x[:1]).model
                if residual == "int8":
                    quantize_float_tensors(model, x.numpy())
                if residual.endswith("ORT build"):
                    model = ort_optimized(model.SerializeToString(), str(Path(tmp, "optimised.onnx")))
                q = Path(tmp, f"{name}.{residual.replace(' ', '_').replace(',', '')}.onnx")
                onnx.save(model, str(q))
                for r in compare(fp32, q, (3, size, size), threads=args.threads, seconds=args.seconds):
                    if r["format"] == "fp32" and residual != "float":
                        continue  # one FP32 row per batch size is enough in the table
                    r.update(
                        model=f"{name} {size}x{size}",
                        format="fp32" if r["format"] == "fp32" else f"w8a8 residual={residual}",
                    )
                    rows.append(r)
    print(f"{'model':<16} {'format':<40} {'batch':>5} {'latency ms':>11} {'img/s':>8} {'vs FP32':>8} {'file':>9}")
    for r in rows:
        print(
            f"{r['model']:<16} {r['format']:<40} {r['batch']:>5} {r['latency_ms']:>11.2f} {r['images_per_s']:>8.0f} "
            f"{r['ratio_vs_fp32']:>7.2f}x {r['file_bytes'] / 1024:>6.0f} KiB"
        )
    Path(args.out).write_text(
        json.dumps({"threads": args.threads, "onnxruntime": ort.__version__, "rows": rows}, indent=1)
    )
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()

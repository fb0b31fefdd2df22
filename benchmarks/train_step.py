"""Training-step throughput: W2A2 SQAKD step vs the full-precision KD step, measured in one run.

    python benchmarks/train_step.py [--batch 256] [--steps 5] [--threads 2] [--bits 2] [--method ewgs]

Both steps do the same work apart from quantization: teacher forward (no grad), student forward,
KL loss, backward and an Adam step on a CIFAR ResNet-20. The ratio is the quantized step time
over the FP step time (target: at most 1.15). Prints a table and writes JSON with --json.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import qdistill
from qdistill.distill.student import make_student
from qdistill.quant.fake_quant import use_compiled_kernels


def time_step(student, teacher, images, steps: int, warmup: int = 2) -> float:
    """Median seconds per optimisation step."""
    opt = torch.optim.Adam(student.parameters(), lr=1e-4)
    student.train()
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        with torch.no_grad():
            t = teacher(images)
        loss = qdistill.kd_loss(student(images), t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bits", type=int, default=2)
    p.add_argument("--method", default="ewgs")
    p.add_argument("--compiled", action="store_true", help="also time torch.compile-fused quantizer kernels")
    p.add_argument("--json", help="write the figures to this file")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    size = 64 if args.model in ("resnet18", "vgg11_64", "mobilenetv2", "shufflenetv2", "squeezenet") else 32
    teacher = qdistill.create_model(args.model).eval()
    images = torch.randn(args.batch, 3, size, size)
    fp_student = make_student(teacher, None)
    q_cfg = qdistill.QuantConfig(method=args.method, weight_bits=args.bits, act_bits=args.bits)
    q_student = make_student(teacher, q_cfg, images[:64])
    fp = time_step(fp_student, teacher, images, args.steps)
    timings = {"eager": time_step(q_student, teacher, images, args.steps)}
    if args.compiled:
        use_compiled_kernels(True)
        time_step(q_student, teacher, images, 1, warmup=1)  # compile outside the timed steps
        timings["compiled"] = time_step(q_student, teacher, images, args.steps)
        use_compiled_kernels(False)
    rows = {"model": args.model, "batch": args.batch, "threads": args.threads, "method": args.method,
            "bits": args.bits, "fp_kd_step_s": fp, "fp_img_per_s": args.batch / fp}  # fmt: skip
    print(f"{args.model}, batch {args.batch}, {args.threads} threads, median of {args.steps} steps")
    print(f"{'step':32} {'s/step':>8} {'img/s':>8} {'vs FP':>6}")
    print(f"{'FP KD':32} {fp:8.3f} {args.batch / fp:8.1f} {1:6.2f}")
    for kind, q in timings.items():
        rows[f"quant_{kind}_step_s"], rows[f"ratio_{kind}"] = q, q / fp
        label = f"W{args.bits}A{args.bits} {args.method} SQAKD ({kind})"
        print(f"{label:32} {q:8.3f} {args.batch / q:8.1f} {q / fp:6.2f}")
    print("target: quantized step <= 1.15x the FP KD step")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()

"""Training-step throughput: W2A2 SQAKD step vs the full-precision KD step, measured side by side in one run.

    python benchmarks/train_step.py [--batch 256] [--steps 5] [--threads 1 2] [--bits 2] [--method ewgs] [--compiled]

Both steps do the same work apart from quantization: teacher forward (no grad), student forward,
KL loss, backward and an Adam step on a CIFAR ResNet-20. For each thread count it times the FP KD
step, the quantized step with eager quantizers and (``--compiled``) with ``train.compile_quantizers``
kernels, and prints the reference-free floor: quantized step time / FP KD step time (targets: at most
1.10 on the fast path, and the fast step at least 1.5x the eager step's throughput). Writes JSON with --json.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from _common import hardware

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


def measure(fp_student, q_student, teacher, images, steps: int, compiled: bool) -> dict[str, float]:
    """Seconds per step of the FP KD step and of the quantized step (eager, and compiled if asked), at the current threads."""
    timings = {"fp": time_step(fp_student, teacher, images, steps), "eager": time_step(q_student, teacher, images, steps)}
    if compiled:
        use_compiled_kernels(True)
        try:
            time_step(q_student, teacher, images, 1, warmup=1)  # compile outside the timed steps
            timings["compiled"] = time_step(q_student, teacher, images, steps)
        finally:
            use_compiled_kernels(False)
    return timings


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts, each timed in turn")
    p.add_argument("--bits", type=int, default=2)
    p.add_argument("--method", default="ewgs")
    p.add_argument("--compiled", action="store_true", help="also time torch.compile-fused quantizer kernels")
    p.add_argument("--json", help="write the figures to this file")
    args = p.parse_args()
    torch.manual_seed(0)
    size = 64 if args.model in ("resnet18", "vgg11_64", "mobilenetv2", "shufflenetv2", "squeezenet") else 32
    teacher = qdistill.create_model(args.model).eval()
    images = torch.randn(args.batch, 3, size, size)
    fp_student = make_student(teacher, None)
    q_cfg = qdistill.QuantConfig(method=args.method, weight_bits=args.bits, act_bits=args.bits)
    q_student = make_student(teacher, q_cfg, images[:64])
    label = f"W{args.bits}A{args.bits} {args.method} SQAKD"
    print(f"{args.model}, batch {args.batch}, median of {args.steps} steps, all rows measured in this run")
    print(f"{'threads':>7} {'step':32} {'s/step':>8} {'img/s':>8} {'vs FP':>6}")
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        t = measure(fp_student, q_student, teacher, images, args.steps, args.compiled)
        row = {"model": args.model, "batch": args.batch, "threads": threads, "method": args.method, "bits": args.bits,
               **{f"{k}_step_s": v for k, v in t.items()}, **{f"ratio_{k}": t[k] / t["fp"] for k in t if k != "fp"}}  # fmt: skip
        if "compiled" in t:
            row["compiled_speedup_over_eager"] = t["eager"] / t["compiled"]
        rows.append(row)
        for kind, sec in t.items():
            name = "FP KD" if kind == "fp" else f"{label} ({kind})"
            print(f"{threads:>7} {name:32} {sec:8.3f} {args.batch / sec:8.1f} {sec / t['fp']:6.2f}")
        if "compiled" in t:
            print(f"{threads:>7} compiled vs eager quantized step: {row['compiled_speedup_over_eager']:.2f}x the throughput")
    print("targets: quantized step <= 1.10x the FP KD step on the fast path; fast step >= 1.5x the eager step's throughput")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": {"hardware": hardware(), "threads": args.threads, "steps": args.steps}, "results": rows}, f, indent=1)


if __name__ == "__main__":
    main()

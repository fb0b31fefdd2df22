"""Training-step throughput: W2A2 SQAKD step vs the full-precision KD step, measured side by side in one run.

    python benchmarks/train_step.py [--batch 256] [--steps 5] [--threads 1 2] [--bits 2] [--method ewgs]
        [--paths eager kernels compile channels_last] [--json benchmarks/results/train_step.json]

Every step is the trainer's: the SQAKD objective's forward (teacher forward under no_grad, student
forward, KL loss), backward and an Adam step on a CIFAR ResNet-20; the FP KD step differs only in
that its student is not quantized. For each thread count it times the FP KD step and the quantized
step on each path: ``eager`` (the reference), ``kernels`` (``train.compile_quantizers``: fused
quantizer kernels), ``compile`` (``train.compile``: the whole objective forward as one graph; the
FP step is compiled too, so its row is the compiled floor) and ``channels_last``. It prints the
reference-free floor, quantized step time / FP KD step time (target: at most 1.10 on the fast path),
and the fast step's throughput over the eager quantized step's (target: at least 1.5x). Compiles happen
outside the timed steps. The machine's load (``os.getloadavg``) is recorded with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from types import SimpleNamespace

import torch
from _common import hardware

import qdistill
from qdistill.distill import build_objective
from qdistill.distill.student import make_student
from qdistill.quant.fake_quant import use_compiled_kernels
from qdistill.train.compile import FastStep

PATHS = ("eager", "kernels", "compile", "channels_last")


def time_step(objective, images, steps: int, warmup: int = 2) -> float:
    """Median seconds per optimisation step of ``objective``'s loss."""
    opt = torch.optim.Adam(objective.student.parameters(), lr=1e-4)
    objective.student.train()
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        loss, _ = objective(images)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def on_path(path: str, objective, run: Callable[[], float]) -> float:
    """``run()`` with the objective set up for ``path``, undone after (the trainer's callbacks do the same)."""
    if path == "kernels":
        use_compiled_kernels(True)
        try:
            return run()
        finally:
            use_compiled_kernels(False)
    if path == "eager":
        return run()
    fast = FastStep(compile=path == "compile", channels_last=path == "channels_last")
    fake_trainer = SimpleNamespace(objective=objective)
    fast.on_fit_start(fake_trainer)
    try:
        return run()
    finally:
        fast.on_fit_end(fake_trainer)


def measure(fp, quant, images, steps: int, paths: list[str]) -> dict[str, float]:
    """Seconds per step, FP KD step (eager, and compiled/channels_last when those paths run) and quantized per path."""
    t = {}
    for path in paths:
        for name, objective in (("fp", fp), ("quant", quant)):
            if name == "fp" and path == "kernels":
                continue  # no quantizers: the eager FP step
            t[f"{name}_{path}"] = on_path(path, objective, lambda o=objective: time_step(o, images, steps))
    return t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts, each timed in turn")
    p.add_argument("--bits", type=int, default=2)
    p.add_argument("--method", default="ewgs")
    p.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    p.add_argument("--json", help="write the figures to this file")
    args = p.parse_args()
    paths = ["eager", *[x for x in args.paths if x != "eager"]]  # the reference always runs
    torch.manual_seed(0)
    size = 64 if args.model in ("resnet18", "vgg11_64", "mobilenetv2", "shufflenetv2", "squeezenet") else 32
    teacher = qdistill.create_model(args.model).eval()
    images = torch.randn(args.batch, 3, size, size)
    q_cfg = qdistill.QuantConfig(method=args.method, weight_bits=args.bits, act_bits=args.bits)
    fp = build_objective("sqakd", make_student(teacher, None), teacher)
    quant = build_objective("sqakd", make_student(teacher, q_cfg, images[:64]), teacher)
    label = f"W{args.bits}A{args.bits} {args.method} SQAKD"
    load_start = os.getloadavg()
    print(
        f"{args.model}, batch {args.batch}, median of {args.steps} steps, all rows measured in this run; load {load_start}"
    )
    print(f"{'threads':>7} {'step':40} {'s/step':>8} {'img/s':>8} {'vs FP':>6}")
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        t = measure(fp, quant, images, args.steps, paths)
        fp_s = t["fp_eager"]
        row = {
            "model": args.model,
            "batch": args.batch,
            "threads": threads,
            "method": args.method,
            "bits": args.bits,
            **{f"{k}_step_s": v for k, v in t.items()},
        }
        for path in paths:
            q = t[f"quant_{path}"]
            row[f"ratio_{path}"] = q / fp_s  # quantized step / eager FP KD step
            if f"fp_{path}" in t and path != "eager":
                row[f"ratio_{path}_vs_fp_{path}"] = q / t[f"fp_{path}"]  # both on the same path
            row[f"speedup_{path}_over_eager"] = t["quant_eager"] / q
        rows.append(row)
        for kind, sec in t.items():
            name, path = kind.split("_", 1)
            shown = f"FP KD ({path})" if name == "fp" else f"{label} ({path})"
            print(f"{threads:>7} {shown:40} {sec:8.3f} {args.batch / sec:8.1f} {sec / fp_s:6.2f}")
        best = min(paths, key=lambda x: t[f"quant_{x}"])
        print(
            f"{threads:>7} fastest quantized path: {best}, {row[f'speedup_{best}_over_eager']:.2f}x the eager "
            f"quantized step's throughput, {row[f'ratio_{best}']:.2f}x the eager FP KD step"
        )
        if args.json:  # after every thread count: a run cut short keeps what it measured
            meta = {
                "hardware": hardware(),
                "threads": args.threads,
                "steps": args.steps,
                "paths": paths,
                "loadavg_start": load_start,
                "loadavg_end": os.getloadavg(),
                "torch": torch.__version__,
            }
            with open(args.json, "w") as f:
                json.dump({"meta": meta, "results": rows}, f, indent=1)
    print(
        "targets: quantized step <= 1.10x the FP KD step on the fast path; fast step >= 1.5x the eager step's throughput"
    )


if __name__ == "__main__":
    main()

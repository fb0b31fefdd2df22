"""Table 3 (the paper's Table 7): KD baselines (``CE + lambda * L``) against label-free SQAKD in QAT.

EWGS W2A2 SmallCNN on Fashion-MNIST. The FP32 teacher is trained first with the recipe of
`fmnist_table.py` (into ``--teacher`` when that folder holds no trained run), and standalone QAT and
SQAKD are trained here too, so every row of the table shares one teacher and one budget. Methods not
registered in ``qdistill.distill.OBJECTIVES`` yet are listed as missing in the JSON, not faked;
rerun the script once they are (results already present are skipped).

    python benchmarks/kd_baselines_table.py      # writes benchmarks/results/kd_baselines_table.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from _common import (
    FMNIST_MODEL,
    ResultLog,
    add_student_args,
    fmnist_teacher_run,
    student_budget,
    student_run,
    timed_run,
)

from qdistill.distill import OBJECTIVES
from qdistill.experiment import MethodConfig

METHODS = (
    "qat",
    "sqakd",
    "ce_kd",
    "squat",
    "fitnet",
    "at",
    "sp",
    "cc",
    "vid",
    "rkd",
    "ft",
    "fsp",
    "nst",
    "crd",
    "cktf",
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    add_student_args(p, "runs/bench/kd_baselines")
    p.set_defaults(teacher="runs/bench/kd_baselines/teacher")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    registered = set(OBJECTIVES.names())
    budget = {"teacher": "60000 train images (10% held out), 10 epochs, Adam 2e-3", **student_budget(args)}
    log = ResultLog(
        "kd_baselines_table",
        {
            "dataset": "Fashion-MNIST",
            "model": FMNIST_MODEL,
            "budget": budget,
            "methods": args.methods,
            "missing": [m for m in args.methods if m not in registered],
        },
    )
    log.save()
    if not log.has("teacher"):
        if not (Path(args.teacher) / "model.safetensors").is_file():
            log.add({**timed_run(fmnist_teacher_run(args.teacher)), "key": "teacher", "method": "fp", "seed": 0})
        else:
            raise SystemExit(f"{args.teacher} holds a teacher this log did not record: pass another --teacher")
    print("teacher", log.get("teacher")["test_top1"], flush=True)
    for seed in args.seeds:
        for method in args.methods:
            key = f"{method}-s{seed}"
            if log.has(key) or method not in registered:
                continue
            try:
                res = timed_run(student_run(args, MethodConfig(method), seed, key))
            except (FloatingPointError, ValueError, RuntimeError) as e:  # recorded in the table, not hidden
                log.add({"key": key, "method": method, "seed": seed, "error": f"{type(e).__name__}: {e}"})
                print(key, "failed:", e, flush=True)
                continue
            log.add({"key": key, "method": method, "seed": seed, **res})
            print(key, res["test_top1"], res["seconds"], flush=True)


if __name__ == "__main__":
    main()

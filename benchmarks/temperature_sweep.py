"""Figure 6a: SQAKD test top-1 against the KD temperature T (EWGS W2A2 SmallCNN, Fashion-MNIST).

Uses the teacher of `fmnist_table.py` (run that first).

    python benchmarks/temperature_sweep.py       # writes benchmarks/results/temperature_sweep.json
"""

from __future__ import annotations

import argparse

import torch
from _common import FMNIST_MODEL, ResultLog, add_student_args, student_budget, student_run, timed_run

from qdistill.experiment import MethodConfig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--temperatures", type=float, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    add_student_args(p, "runs/bench/temperature")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    log = ResultLog(
        "temperature_sweep", {"dataset": "Fashion-MNIST", "model": FMNIST_MODEL, "budget": student_budget(args)}
    )
    log.save()
    for seed in args.seeds:
        for t in args.temperatures:
            key = f"T{t:g}-s{seed}"
            if log.has(key):
                continue
            res = timed_run(student_run(args, MethodConfig("sqakd", {"temperature": t}), seed, key))
            log.add({"key": key, "temperature": t, "seed": seed, **res})
            print(key, res["test_top1"], res["seconds"], flush=True)


if __name__ == "__main__":
    main()

"""Table 3 (the paper's Table 7): KD baselines (``CE + lambda * L``) against label-free SQAKD in QAT.

EWGS W2A2 SmallCNN on Fashion-MNIST, the teacher of `fmnist_table.py` (run that first). Methods not
registered in ``qdistill.distill.OBJECTIVES`` yet are listed as missing in the JSON, not faked;
rerun the script once they are (results already present are skipped). The standalone-EWGS and
SQAKD rows of the rendered table come from `fmnist_table.py`, whose W2A2 EWGS runs use this exact
configuration (same teacher, images, epochs and seeds), so they are not trained twice.

    python benchmarks/kd_baselines_table.py      # writes benchmarks/results/kd_baselines_table.json
"""

from __future__ import annotations

import argparse

import torch

from _common import FMNIST_MODEL, ResultLog, add_student_args, student_budget, student_run, timed_run
from qdistill.distill import OBJECTIVES
from qdistill.experiment import MethodConfig

METHODS = ("ce_kd", "squat", "fitnet", "at", "sp", "cc", "vid", "rkd", "ft", "fsp", "nst", "crd", "cktf")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    add_student_args(p, "runs/bench/kd_baselines")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    registered = set(OBJECTIVES.names())
    log = ResultLog("kd_baselines_table", {"dataset": "Fashion-MNIST", "model": FMNIST_MODEL, "budget": student_budget(args),
                                           "methods": args.methods, "missing": [m for m in args.methods if m not in registered]})  # fmt: skip
    log.save()
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

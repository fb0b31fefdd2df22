"""Figure 6a: SQAKD test top-1 against the KD temperature T (EWGS W2A2 SmallCNN, Fashion-MNIST).

Uses the teacher of `fmnist_table.py` (run that first).

    python benchmarks/temperature_sweep.py       # writes benchmarks/results/temperature_sweep.json
"""

from __future__ import annotations

import argparse

import torch

from _common import ResultLog, hardware, timed_run
from qdistill import QuantConfig, RunConfig, TrainConfig
from qdistill.experiment import DataConfig, MethodConfig, ModelConfig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--temperatures", type=float, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--bits", type=int, default=2)
    p.add_argument("--subset", type=int, default=3000)
    p.add_argument("--test-subset", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--teacher", default="runs/bench/fmnist/teacher/model.pt")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/bench/temperature")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    budget = {"student": f"EWGS W{args.bits}A{args.bits}, {args.subset} train images (10% held out), {args.epochs} epochs, Adam 1e-3",
              "test_images": args.test_subset, "hardware": hardware()}  # fmt: skip
    log = ResultLog("temperature_sweep", {"dataset": "Fashion-MNIST", "model": "smallcnn", "budget": budget})
    log.save()
    data = DataConfig(format="idx", root="../shared/data/fashion-mnist", subset=args.subset, test_subset=args.test_subset)
    for seed in args.seeds:
        for t in args.temperatures:
            key = f"T{t:g}-s{seed}"
            if log.has(key):
                continue
            cfg = RunConfig(model=ModelConfig("smallcnn", pretrained=args.teacher), data=data,
                            quant=QuantConfig(method="ewgs", weight_bits=args.bits, act_bits=args.bits),
                            method=MethodConfig("sqakd", {"temperature": t}),
                            train=TrainConfig(epochs=args.epochs, progress=False, device="cpu", hessian_probes=1, seed=seed),
                            out=f"{args.out}/{key}")  # fmt: skip
            res = timed_run(cfg)
            log.add({"key": key, "temperature": t, "seed": seed, **res})
            print(key, res["test_top1"], res["seconds"], flush=True)


if __name__ == "__main__":
    main()

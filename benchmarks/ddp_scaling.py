"""Data parallel scaling on this machine: 1 vs 2 gloo processes training the same run, same global batch.

    python benchmarks/ddp_scaling.py [--steps 50] [--batch 64] [--threads 1] [--procs 1 2] [--dtype float64]
                                     [--no-yardstick]

CIFAR-10 ResNet-20 W2A2 SQAKD (EWGS quantizers, delta from the Hessian of the global batch; the
pretrained teacher from ../shared/teachers when present, else a seeded random one) on synthetic
32x32 images with crop+flip augmentation, through qdistill's `Trainer` exactly as `qdistill train
--nproc N` runs it, plus one process at twice the threads (same math, other float rounding).
Prints the per-step losses, for how many steps each run stays within 1e-6 of the first, the
largest difference, and the throughput (images/s of the global batch, median over the steps
after the first two) with the ratios; writes benchmarks/results/ddp_scaling.json. SGD: Adam's
first steps are sign(gradient), which turns float rounding in near-zero gradients into
full-size updates. W2A2 training is chaotic: a rounding difference flips a quantized level
now and then and grows from there, so long float32 runs drift apart even between thread counts.
``--dtype float64`` runs every tensor (models, quantizers, loss) in float64 and writes
ddp_scaling_float64.json: rounding differences are then ~1e-16 and rarely reach a level
boundary, so agreement there tests the equivalence itself rather than float32's chaos.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
TEACHER = Path(__file__).resolve().parents[1] / ".." / "shared" / "teachers" / "resnet20-12fca82f.th"


def worker(out: str, steps: int, batch: int, threads: int, lr: float, dtype: str) -> None:
    """One rank of a run: train ``steps`` global batches, record loss and time per step."""
    import numpy as np
    import torch

    import qdistill
    from qdistill.data import BatchLoader, ImageSet
    from qdistill.train import distributed

    class Loader(BatchLoader):
        """The loader's float32 images in the run's dtype (the same values in every process)."""

        def _batch(self, *args):
            return super()._batch(*args).to(torch.get_default_dtype())

    torch.set_num_threads(threads)
    torch.set_default_dtype(getattr(torch, dtype))  # models, quantizers and their buffers
    with distributed.process_group(timeout_s=300):
        rank, world = distributed.rank_and_world()
        rng = np.random.default_rng(0)
        data = ImageSet((rng.random((steps * batch, 32, 32, 3)) * 255).astype(np.uint8), None)
        norm = {"mean": (0.49, 0.48, 0.45), "std": (0.25, 0.24, 0.26)}
        loader = Loader(
            data,
            batch,
            **norm,
            augment="crop_flip",
            shuffle=True,
            drop_last=True,
            with_labels=False,
            num_shards=world,
            shard=rank,
        )
        torch.manual_seed(0)
        pretrained = str(TEACHER) if TEACHER.is_file() else None
        teacher = qdistill.create_model("resnet20", num_classes=10, pretrained=pretrained).eval()
        calib = next(iter(Loader(data, 256, **norm, with_labels=False)))
        student = qdistill.make_student(teacher, qdistill.QuantConfig(method="ewgs", weight_bits=2, act_bits=2), calib)
        objective = qdistill.build_objective("sqakd", student, teacher)
        cfg = qdistill.TrainConfig(
            epochs=1, optimizer="sgd", lr=lr, momentum=0.9, progress=False, device="cpu", amp="off", hessian_probes=1
        )
        losses, stamps = [], []

        class Record:
            def on_step_end(self, trainer, logs):
                losses.append(logs["loss"])
                stamps.append(time.perf_counter())

        start = time.perf_counter()
        qdistill.Trainer(objective, loader, cfg, callbacks=[Record()]).fit()
        if rank == 0:
            times = np.diff([start, *stamps])[2:]
            Path(out).write_text(
                json.dumps(
                    {
                        "world": world,
                        "losses": losses,
                        "step_s": float(np.median(times)),
                        "images_per_s": batch / float(np.median(times)),
                    }
                )
            )


def summarize(result: dict) -> None:
    """Print each run and add, per run, its agreement with the first run (losses within 1e-6 relative:
    float32 holds a loss of 17 only to 2e-6) and its throughput ratio."""
    runs = result["runs"]
    names = list(runs)
    base = runs[names[0]]
    result["vs_" + names[0]] = {}
    for name, r in runs.items():
        print(
            f"{name} (processes x threads): {r['images_per_s']:.1f} img/s, "
            f"losses {' '.join(f'{v:.6f}' for v in r['losses'])}"
        )
    for name in names[1:]:
        diffs = [abs(a - b) for a, b in zip(base["losses"], runs[name]["losses"])]
        same = next((i for i, (d, a) in enumerate(zip(diffs, base["losses"])) if d > 1e-6 * abs(a)), len(diffs))
        ratio = runs[name]["images_per_s"] / base["images_per_s"]
        result["vs_" + names[0]][name] = {
            "max_abs_loss_diff": max(diffs),
            "steps_within_1e-6_rel": same,
            "throughput_ratio": ratio,
        }
        print(
            f"{name} vs {names[0]}: losses within 1e-6 (relative) for the first {same} of {len(diffs)} steps, "
            f"max |difference| {max(diffs):.2e}, throughput ratio {ratio:.2f}"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch", type=int, default=64, help="global batch (each of N processes takes batch/N)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--lr", type=float, default=1e-3, help="SGD learning rate (momentum 0.9)")
    p.add_argument(
        "--dtype",
        choices=["float32", "float64"],
        default="float32",
        help="float type of every tensor; float64 writes ddp_scaling_float64.json",
    )
    p.add_argument(
        "--yardstick",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run 1 process at twice the threads (slow on a loaded machine)",
    )
    p.add_argument("--summarize", action="store_true", help="only recompute the summary of the existing JSON")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args.worker, args.steps, args.batch, args.threads, args.lr, args.dtype)
    path = RESULTS / ("ddp_scaling.json" if args.dtype == "float32" else f"ddp_scaling_{args.dtype}.json")
    if args.summarize:
        result = json.loads(path.read_text())
        summarize(result)
        path.write_text(json.dumps(result, indent=1))
        return None
    from qdistill.train.distributed import launch

    # (processes, threads each); the last run, 1 process at twice the threads, only changes float
    # rounding: how far it drifts from the first is the yardstick for the N-process drift
    plan = [(n, args.threads) for n in args.procs] + ([(args.procs[0], 2 * args.threads)] if args.yardstick else [])
    runs, load = {}, [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        for n, threads in plan:
            out = Path(tmp) / f"{n}x{threads}.json"
            argv = [
                __file__,
                "--worker",
                str(out),
                "--steps",
                str(args.steps),
                "--batch",
                str(args.batch),
                "--threads",
                str(threads),
                "--lr",
                str(args.lr),
                "--dtype",
                args.dtype,
            ]
            if launch(argv, n) != 0:
                sys.exit(f"the {n}-process run failed")
            runs[f"{n}x{threads}"] = json.loads(out.read_text())
            load.append(os.getloadavg()[0])
    result = {
        "steps": args.steps,
        "global_batch": args.batch,
        "lr": args.lr,
        "dtype": args.dtype,
        "cpus": os.cpu_count(),
        "load_average_1min": load,
        "teacher": "pretrained" if TEACHER.is_file() else "random",
        "runs": runs,
    }
    summarize(result)
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print(f"written to {path}")


if __name__ == "__main__":
    main()

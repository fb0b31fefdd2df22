"""Figure 5: 2D loss surfaces (contour and 3D) of the FP teacher, the standalone EWGS student and the
SQAKD student around their weights, with `qdistill.analysis.loss_surface` (filter-normalised random
directions, Li et al. 2018). Loss: cross-entropy on held test images (labels only for this analysis).

Uses the Fashion-MNIST runs of `fmnist_table.py` (run that first).

    python benchmarks/loss_surface_plot.py       # writes benchmarks/results/loss_surface.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import FMNIST_ROOT, ResultLog, hardware

from qdistill import BatchLoader, load_dataset, load_run
from qdistill.analysis import loss_surface

MODELS = {
    "FP teacher": "teacher",
    "EWGS W2A2 (supervised)": "qat-ewgs-w2a2-s0",
    "SQAKD W2A2 (label-free)": "sqakd-ewgs-w2a2-s0",
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="runs/bench/fmnist")
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--steps", type=int, default=11)
    p.add_argument("--span", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    splits = load_dataset("idx", FMNIST_ROOT)
    test = splits.test.subset(torch.arange(args.images).numpy())
    batches = list(BatchLoader(test, 256, mean=splits.mean, std=splits.std, with_labels=True))
    log = ResultLog(
        "loss_surface",
        {
            "dataset": "Fashion-MNIST",
            "images": args.images,
            "steps": args.steps,
            "span": args.span,
            "hardware": hardware(),
            "loss": "test cross-entropy",
        },
    )
    log.save()
    for label, run in MODELS.items():
        if log.has(run) or not (Path(args.runs) / run / "best.pt").exists():
            continue
        model, _, _ = load_run(Path(args.runs) / run)
        start = time.perf_counter()
        s = loss_surface(
            model,
            lambda m, b: F.cross_entropy(m(b[0]), b[1]),
            batches,
            steps=args.steps,
            span=args.span,
            dims=2,
            seed=0,
        )
        log.add(
            {
                "key": run,
                "label": label,
                "coords": s.coords.tolist(),
                "losses": s.losses.tolist(),
                "center": s.center,
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
        print(label, f"centre {s.center:.3f}", flush=True)


if __name__ == "__main__":
    main()

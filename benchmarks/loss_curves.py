"""Figures 2 and 3: CE and KL per iteration, and test top-1 during training, for lambda in {0, 0.5, 1},
loss = (1 - lambda) CE + lambda KL.

lambda = 0 is standalone QAT (`qat`), 0.5 is `ce_kd`, 1 is label-free SQAKD (`sqakd`): at lambda = 1
the objective is given images only, and CE is *logged* from the detached logits and held labels
purely as a diagnostic. Student: EWGS W2A2 SmallCNN from the Fashion-MNIST teacher of
`fmnist_table.py` (run that first). A plain loop over the library's public API (no EWGS delta
updates: the initial delta is used). Test top-1 is measured every ``--eval-every`` iterations on
``--test-images`` test images; the FP teacher's top-1 on them is recorded as the reference.

    python benchmarks/loss_curves.py             # writes benchmarks/results/loss_curves.json
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from _common import FMNIST_MODEL, FMNIST_ROOT, FMNIST_TEACHER, ResultLog, hardware

from qdistill import (
    BatchLoader,
    QuantConfig,
    build_objective,
    create_model,
    evaluate,
    kd_loss,
    load_dataset,
    make_student,
)

OBJECTIVE = {0.0: ("qat", {}), 0.5: ("ce_kd", {"kd_weight": 0.5}), 1.0: ("sqakd", {})}


def _test_loader(splits, n: int) -> BatchLoader:
    return BatchLoader(splits.test.subset(np.arange(n)), 500, mean=splits.mean, std=splits.std, with_labels=True)


def run(lam: float, seed: int, args: argparse.Namespace) -> dict[str, list[float]]:
    """Train one student for ``args.iters`` steps; return per-iteration CE and KL, and test top-1."""
    splits = load_dataset("idx", FMNIST_ROOT)
    test = _test_loader(splits, args.test_images)
    idx = np.sort(np.random.default_rng(0).permutation(len(splits.train))[: args.subset])
    loader = BatchLoader(
        splits.train.subset(idx),
        args.batch_size,
        mean=splits.mean,
        std=splits.std,
        augment="crop",
        shuffle=True,
        drop_last=True,
        seed=seed,
        with_labels=True,
    )
    teacher = create_model(FMNIST_MODEL, num_classes=10, in_channels=1, pretrained=args.teacher).eval()
    torch.manual_seed(seed)
    calib = next(iter(loader))[0]
    student = make_student(teacher, QuantConfig(method="ewgs", weight_bits=args.bits, act_bits=args.bits), calib)
    name, params = OBJECTIVE[lam]
    objective = build_objective(name, student, teacher, **params)
    captured: list[torch.Tensor] = []
    student.register_forward_hook(lambda _m, _i, out: captured.append(out.detach()))
    opt = torch.optim.Adam(student.parameters(), lr=args.lr)
    ce_log, kl_log, top1, step, epoch = [], [], [], 0, 0
    student.train()
    while step < args.iters:
        loader.set_epoch(epoch)
        for images, labels in loader:
            captured.clear()
            loss, _ = objective(images, labels if objective.uses_labels else None)  # label-free: images only
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():  # diagnostics only, after the step's loss was formed
                logits = captured[0]
                ce_log.append(float(F.cross_entropy(logits, labels)))
                kl_log.append(float(kd_loss(logits, teacher(images), 4.0)))
            step += 1
            if step % args.eval_every == 0 or step == 1:
                top1.append([step, evaluate(student, test)["top1"]])
            if step == args.iters:
                break
        epoch += 1
    return {"ce": ce_log, "kl": kl_log, "test_top1": top1}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--subset", type=int, default=6000)
    p.add_argument("--bits", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--test-images", type=int, default=1000)
    p.add_argument("--teacher", default=FMNIST_TEACHER)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    budget = {
        "iterations": args.iters,
        "batch_size": args.batch_size,
        "train_images": args.subset,
        "student": f"EWGS W{args.bits}A{args.bits} SmallCNN, Adam {args.lr}",
        "hardware": hardware(),
    }
    log = ResultLog("loss_curves", {"dataset": "Fashion-MNIST", "budget": budget})
    if not log.has("teacher"):
        teacher = create_model(FMNIST_MODEL, num_classes=10, in_channels=1, pretrained=args.teacher)
        top1 = evaluate(teacher, _test_loader(load_dataset("idx", FMNIST_ROOT), args.test_images))["top1"]
        log.add({"key": "teacher", "test_top1": top1})
    log.save()
    for seed in args.seeds:
        for lam in OBJECTIVE:
            key = f"lambda{lam}-s{seed}"
            if log.has(key):
                continue
            start = time.perf_counter()
            curves = run(lam, seed, args)
            log.add(
                {"key": key, "lambda": lam, "seed": seed, "seconds": round(time.perf_counter() - start, 1), **curves}
            )
            print(key, f"ce {curves['ce'][-1]:.3f} kl {curves['kl'][-1]:.4f}", flush=True)


if __name__ == "__main__":
    main()

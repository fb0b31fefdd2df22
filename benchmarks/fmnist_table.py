"""Table 1: Fashion-MNIST, SmallCNN. FP teacher, then W1A1/W2A2/W4A4 for standalone QAT (EWGS, PACT,
LSQ, DoReFa; supervised) and the same quantizers with label-free SQAKD, plus SQuaT when registered.

    python benchmarks/fmnist_table.py            # resumes: results already in the JSON are skipped

Jobs run in priority order (EWGS at every width and the other quantizers at W2A2 for seed 0, then
more seeds of those, then the other widths), so a run cut short still leaves the most useful rows. Writes benchmarks/results/fmnist_table.json.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch
from _common import (
    FMNIST_MODEL,
    FMNIST_ROOT,
    ResultLog,
    add_job_filters,
    fmnist_teacher_run,
    hardware,
    record_run,
    select_jobs,
    timed_run,
)

from qdistill import BatchLoader, QuantConfig, RunConfig, TrainConfig, create_model, evaluate
from qdistill.distill import OBJECTIVES
from qdistill.experiment import DataConfig, MethodConfig, ModelConfig, prepare_data

QUANTIZERS = ("ewgs", "pact", "lsq", "dorefa")
BITS = (1, 2, 4)


def jobs(seeds: list[int]) -> list[tuple[str, str, int, int]]:
    """(method, quantizer, bits, seed) in priority order."""
    ewgs = [(m, "ewgs", b) for b in BITS for m in ("qat", "sqakd")]
    w2 = [(m, q, 2) for q in QUANTIZERS[1:] for m in ("qat", "sqakd")] + [("squat", "ewgs", 2)]
    rest = [(m, q, b) for q in QUANTIZERS[1:] for b in (1, 4) for m in ("qat", "sqakd")] + [
        ("squat", "ewgs", 1),
        ("squat", "ewgs", 4),
    ]
    order = [(*g, seeds[0]) for g in ewgs + w2]
    order += [(*g, s) for s in seeds[1:] for g in ewgs]
    order += [(*g, s) for s in seeds[1:] for g in w2]
    return order + [(*g, s) for s in seeds for g in rest]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--teacher-subset", type=int, default=None, help="teacher training images (default: all 60k)")
    p.add_argument("--teacher-epochs", type=int, default=10)
    p.add_argument(
        "--subset", type=int, default=None, help="training images of each student (default: all 60k; 10%% held out)"
    )
    p.add_argument("--test-subset", type=int, default=None, help="test images (default: all 10k)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    add_job_filters(p)
    p.add_argument(
        "--name",
        default="fmnist_table",
        help="result file (fmnist_table_* files are merged when rendering; fmnist_long is the longer-budget table)",
    )
    p.add_argument("--out", default="runs/bench/fmnist")
    p.add_argument("--teacher-run", default=None, help="teacher run folder (default OUT/teacher; trained if missing)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    budget = {
        "teacher": f"{args.teacher_subset or 60000} train images (10% held out), {args.teacher_epochs} epochs, Adam 2e-3",
        "student": f"{args.subset or 60000} train images (10% held out for model selection), {args.epochs} epoch(s), Adam 1e-3",
        "test_images": args.test_subset or 10000,
        "hardware": hardware(),
    }
    log = ResultLog(
        args.name, {"dataset": "Fashion-MNIST", "model": FMNIST_MODEL, "budget": budget}, family=p.get_default("name")
    )
    log.save()

    data = DataConfig(format="idx", root=FMNIST_ROOT, subset=args.teacher_subset, test_subset=args.test_subset)
    train = TrainConfig(epochs=args.teacher_epochs, lr=2e-3, progress=False, device="cpu", hessian_probes=1)
    teacher_run = args.teacher_run or f"{args.out}/teacher"
    if not log.has("teacher"):
        cfg = fmnist_teacher_run(teacher_run, args.teacher_epochs, args.teacher_subset, args.test_subset)
        log.add({"key": "teacher", "method": "fp", "bits": 32, "seed": 0, **timed_run(cfg)})
    teacher = log.get("teacher")
    if teacher.get("test_images") != args.test_subset:  # students are tested on these images: so is the teacher
        splits, _, _, test = prepare_data(data)
        model = create_model(FMNIST_MODEL, num_classes=10, in_channels=1, pretrained=teacher_run)
        top1 = evaluate(model, BatchLoader(test, 500, mean=splits.mean, std=splits.std), device="cpu")["top1"]
        log.add({**teacher, "test_top1": top1, "test_images": args.test_subset})
    print("teacher", log.get("teacher")["test_top1"], flush=True)
    model = ModelConfig(FMNIST_MODEL, pretrained=teacher_run)
    data = replace(data, subset=args.subset)
    for method, quantizer, bits, seed in select_jobs(args, jobs(args.seeds)):
        key = f"{method}-{quantizer}-w{bits}a{bits}-s{seed}"
        if log.has(key):
            continue
        if method not in OBJECTIVES.names():
            print(f"skip {key}: method {method!r} is not registered yet", flush=True)
            continue
        cfg = RunConfig(
            model=model,
            data=data,
            quant=QuantConfig(method=quantizer, weight_bits=bits, act_bits=bits),
            method=MethodConfig(method),
            train=replace(train, epochs=args.epochs, lr=1e-3, seed=seed),
            out=f"{args.out}/{key}",
        )
        record_run(log, {"key": key, "method": method, "quantizer": quantizer, "bits": bits, "seed": seed}, cfg)


if __name__ == "__main__":
    main()

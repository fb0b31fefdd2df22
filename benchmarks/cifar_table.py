"""Table 2: CIFAR-10 (JPEG) ResNet-20. The shared teacher is first fine-tuned on the JPEG train split
(with labels: teacher pre-training, not our method), then students as in Table 1.

    python benchmarks/cifar_table.py             # resumes: results already in the JSON are skipped

Writes benchmarks/results/cifar_table.json. The teacher's accuracy before and after fine-tuning is
recorded. Rows run in priority order (EWGS at every width, the other quantizers at W2A2, the rest).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch
from _common import ResultLog, add_job_filters, hardware, record_run, select_jobs, timed_run

from qdistill import BatchLoader, QuantConfig, RunConfig, TrainConfig, create_model, evaluate
from qdistill.distill import OBJECTIVES
from qdistill.experiment import DataConfig, MethodConfig, ModelConfig, prepare_data

ROOT = "../shared/data/cifar10-jpeg.tar.gz"
TEACHER = "../shared/teachers/resnet20-12fca82f.th"
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # the teachers' training normalisation


def jobs(seeds: list[int]) -> list[tuple[str, str, int, int]]:
    """(method, quantizer, bits, seed) in priority order."""
    first = [(m, "ewgs", b) for b in (1, 2, 4) for m in ("qat", "sqakd")]
    first += [(m, q, 2) for q in ("pact", "lsq", "dorefa") for m in ("qat", "sqakd")] + [("squat", "ewgs", 2)]
    rest = [(m, q, b) for q in ("pact", "lsq", "dorefa") for b in (1, 4) for m in ("qat", "sqakd")]
    rest += [("squat", "ewgs", b) for b in (1, 4)]
    order = [(*g, seeds[0]) for g in first]
    order += [(m, "ewgs", b, s) for s in seeds[1:] for b in (1, 2, 4) for m in ("qat", "sqakd")]
    order += [(*g, s) for s in seeds[1:] for g in first if g[1] != "ewgs" or g[0] == "squat"]  # W2A2, more seeds
    return order + [(*g, s) for s in seeds for g in rest]


def speed_options(args: argparse.Namespace) -> str:
    """The budget line's note of the non-default batch / fast-path options (tables run without them
    keep their original budget line, so they still resume)."""
    if not (args.compile or args.channels_last or args.batch_size != 128):
        return ""
    return f", batch {args.batch_size}" + ", train.compile" * args.compile + ", channels_last" * args.channels_last


def test_top1(data: DataConfig, weights: str) -> float:
    """Top-1 of a ResNet-20 state-dict file on the test images of ``data``."""
    splits, _, _, test = prepare_data(data)
    model = create_model("resnet20", num_classes=10, in_channels=3, pretrained=weights)
    return evaluate(model, BatchLoader(test, 500, mean=splits.mean, std=splits.std), device="cpu")["top1"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--teacher-subset", type=int, default=10000)
    p.add_argument("--teacher-epochs", type=int, default=1)
    p.add_argument("--subset", type=int, default=4000, help="training images of each student (10%% held out)")
    p.add_argument("--test-subset", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--compile", action="store_true", help="the fast path: whole-step torch.compile (train.compile)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--checkpoint-every", type=int, default=None, help="steps between mid-epoch checkpoints")
    add_job_filters(p)
    p.add_argument(
        "--name",
        default="cifar_table",
        help="result file (cifar_table_* files are merged when rendering; cifar_long is the longer-budget table)",
    )
    p.add_argument("--out", default="runs/bench/cifar")
    p.add_argument(
        "--teacher-run", default=None, help="fine-tuned teacher run folder (default OUT/teacher; trained if missing)"
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    budget = {
        "teacher_finetune": f"{args.teacher_subset} JPEG train images, {args.teacher_epochs} epoch(s), SGD 0.01 cosine",
        "student": f"{args.subset} train images (10% held out for model selection), {args.epochs} epoch(s), Adam 5e-4"
        + speed_options(args),
        "test_images": args.test_subset,
        "hardware": hardware(),
    }
    log = ResultLog(
        args.name, {"dataset": "CIFAR-10 JPEG", "model": "resnet20", "budget": budget}, family=p.get_default("name")
    )
    log.save()

    data = DataConfig(
        format="imagefolder", root=ROOT, subset=args.teacher_subset, test_subset=args.test_subset, mean=MEAN, std=STD
    )
    train = TrainConfig(
        epochs=args.teacher_epochs,
        optimizer="sgd",
        lr=0.01,
        nesterov=True,
        weight_decay=5e-4,
        progress=False,
        device=args.device,
        hessian_probes=1,
    )
    teacher_run = args.teacher_run or f"{args.out}/teacher"
    if not log.has("teacher") and not Path(f"{teacher_run}/model.safetensors").exists():
        cfg = RunConfig(
            model=ModelConfig("resnet20", pretrained=TEACHER),
            data=data,
            quant=None,
            method=MethodConfig("qat"),
            train=train,
            out=teacher_run,
        )
        log.add({"key": "teacher", "method": "fp", "bits": 32, "seed": 0, **timed_run(cfg)})
    for key, weights in (("teacher_before", TEACHER), ("teacher", teacher_run)):
        record = log.get(key) or {"key": key, "method": "fp", "bits": 32, "seed": 0}
        if record.get("test_images") != args.test_subset:  # students are tested on these images: so is the teacher
            log.add({**record, "test_top1": test_top1(data, weights), "test_images": args.test_subset})
    print("teacher", log.get("teacher_before")["test_top1"], "->", log.get("teacher")["test_top1"], flush=True)
    model = ModelConfig("resnet20", pretrained=teacher_run)
    data = replace(data, subset=args.subset)
    data = replace(data, batch_size=args.batch_size)
    student_train = TrainConfig(
        epochs=args.epochs,
        lr=5e-4,
        progress=False,
        device=args.device,
        hessian_probes=1,
        compile=args.compile,
        channels_last=args.channels_last,
        checkpoint_every=args.checkpoint_every,
    )
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
            train=replace(student_train, seed=seed),
            out=f"{args.out}/{key}",
        )
        record_run(log, {"key": key, "method": method, "quantizer": quantizer, "bits": bits, "seed": seed}, cfg)


if __name__ == "__main__":
    main()

"""The SQAKD paper's CIFAR-10 ResNet-20 schedule (label-free SQAKD and standalone EWGS) on one GPU, in a time budget.

    python benchmarks/gpu_schedule.py --data PATH/cifar10-jpeg.tar.gz --teacher PATH/resnet20-12fca82f.th [--minutes 9]
    python benchmarks/gpu_schedule.py --smoke      # CPU, seconds: tiny subset, 1 epoch (fake images without ../shared)

1. The shared teacher is fine-tuned with labels on the JPEG train split (``cifar_table.py``'s recipe:
   teacher pre-training, not our method) and tested before and after.
2. One epoch of the first student (SQAKD + EWGS W2A2) is timed (the probe), and the number of epochs
   is sized so that the jobs fit in ``--minutes`` (all of them at that epoch count; W1A1 and W4A4
   only when ``--min-epochs`` still fits).
3. The jobs run in priority order, each with the paper's recipe (Adam 1e-3, quantizer lr 1e-5, no
   weight decay, batch 256, cosine, T=4): SQAKD W2A2 (label-free), EWGS W2A2 (labels), then the
   W1A1 pair and the W4A4 pair.

Data are decoded once (the library caches the decoded archive: ``--cache-dir``) and held in memory; training uses the device ``cuda`` with
bf16 autocast (``train.amp: auto``). The result log (default benchmarks/results/gpu_schedule.json)
is rewritten after every epoch, so a run cut short keeps its partial results; rerunning the same
command resumes: finished jobs are skipped, a job cut short continues from its ``last.pt``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import RESULTS, ResultLog, hardware
from PIL import Image

from qdistill import (
    BatchLoader,
    QuantConfig,
    TrainConfig,
    Trainer,
    build_objective,
    create_model,
    evaluate,
    make_student,
)
from qdistill.data import DataSplits, ImageSet
from qdistill.experiment import DataConfig, build_loaders, loader_device, prepare_data
from qdistill.train.checkpoint import load_checkpoint

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # the teachers' training normalisation
JOBS = [("sqakd", 2), ("qat", 2), ("sqakd", 1), ("qat", 1), ("sqakd", 4), ("qat", 4)]  # priority order, in pairs
PROBE = "probe-sqakd-ewgs-w2a2"


def job_key(method: str, bits: int) -> str:
    return f"{method}-ewgs-w{bits}a{bits}"


class EpochReportingTrainer(Trainer):
    """A `Trainer` that hands every finished epoch's metrics (train loss, validation) to ``on_epoch``."""

    def __init__(self, *args: Any, on_epoch: Callable[[list[dict[str, Any]]], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_epoch = on_epoch

    def validate(self) -> dict[str, float]:
        metrics = super().validate()  # fit calls this once per epoch, after the training pass
        self.on_epoch([*self.history, {**self.row, **metrics}])
        return metrics


def fake_cifar(root: Path, per_class: int = 12) -> Path:
    """A tiny CIFAR-like JPEG image folder (10 classes of random 32x32 images) for ``--smoke`` without ../shared."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", per_class // 2)):
        for c in range(10):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
    return root


def plan_epochs(
    seconds_left: float, epoch_s: float, overhead_s: float, min_epochs: int, max_epochs: int
) -> tuple[int, int]:
    """(number of jobs, epochs each): the most job pairs that still get ``min_epochs`` in the time left.

    A job costs ``overhead_s`` (model build, calibration, test) plus ``epoch_s`` per epoch, as measured
    on the probe. With too little time for even the W2A2 pair at ``min_epochs`` it still gets what fits
    (at least 1 epoch).
    """
    for jobs in range(len(JOBS), 0, -2):
        epochs = int((seconds_left - jobs * overhead_s) // (jobs * epoch_s))
        if epochs >= min_epochs:
            return jobs, min(epochs, max_epochs)
    return 2, max(1, min(int((seconds_left - 2 * overhead_s) // (2 * epoch_s)), max_epochs))


class Schedule:
    """The teacher, the in-memory data and the result log shared by all jobs of one run."""

    def __init__(self, args: argparse.Namespace, log: ResultLog) -> None:
        self.args, self.log = args, log
        self.device = torch.device(args.device)
        self.data = DataConfig(
            format="imagefolder",
            root=args.data,
            subset=args.subset,
            test_subset=args.test_subset,
            batch_size=args.batch_size,
            mean=MEAN,
            std=STD,
            cache_dir=args.cache_dir,
        )
        self._sets: dict[str, tuple[DataSplits, ImageSet, ImageSet | None, ImageSet | None]] = {}

    def sets(self, data: DataConfig) -> tuple[DataSplits, ImageSet, ImageSet | None, ImageSet | None]:
        """(splits, train, val, test) of ``data``, decoded once (the library caches the decoded archive) and kept."""
        key = repr(replace(data, batch_size=1, eval_batch_size=1))  # the images do not depend on the batching
        if key not in self._sets:
            self._sets[key] = prepare_data(data)
        return self._sets[key]

    def test_loader(self) -> BatchLoader:
        splits, _, _, test = self.sets(self.data)
        return BatchLoader(test, self.data.eval_batch_size, mean=splits.mean, std=splits.std)

    def fit(
        self,
        key: str,
        teacher: torch.nn.Module,
        quant: QuantConfig | None,
        method: str,
        train: TrainConfig,
        data: DataConfig,
        row: dict[str, Any],
    ) -> dict[str, Any]:
        """Train one model on ``data`` (resuming OUT/KEY/last.pt), logging every epoch; returns its finished record."""
        splits, train_set, val_set, _ = self.sets(data)
        calib = next(
            iter(BatchLoader(train_set.without_labels(), 256, mean=splits.mean, std=splits.std, with_labels=False))
        )
        student = make_student(teacher, quant, calib)
        objective = build_objective(method, student, teacher)
        labels = objective.uses_labels
        device = loader_device(data.on_device, self.device)
        train_loader, val_loader = build_loaders(
            data, splits, train_set, val_set, labels, train.seed, device=device, channels_last=train.channels_last
        )
        start = time.perf_counter()
        epoch_ends: list[float] = []

        def on_epoch(history: list[dict[str, Any]]) -> None:
            epoch_ends.append(time.perf_counter() - start)
            self.log.add({**row, "key": key, "labels_used": labels, "epochs": train.epochs, "history": history})

        trainer = EpochReportingTrainer(
            objective,
            train_loader,
            train,
            val_loader,
            f"{self.args.out}/{key}",
            {"labels_used": labels},
            on_epoch=on_epoch,
        )
        history = trainer.fit(resume=True)
        student.load_state_dict(
            load_checkpoint(Path(self.args.out) / key / "best.pt", map_location=self.device)["student"]
        )
        test = evaluate(student, self.test_loader(), teacher if quant is not None else None, self.device)
        record = {
            **row,
            "key": key,
            "labels_used": labels,
            "epochs": train.epochs,
            "history": history,
            "seconds": round(time.perf_counter() - start, 1),
            "first_epoch_seconds": epoch_ends[0] if epoch_ends else None,
            **{f"test_{k}": v for k, v in test.items() if k != "images"},
        }
        self.log.add(record)
        print(
            key,
            f"{train.epochs} epoch(s)",
            f"test top-1 {record['test_top1']:.2f}",
            f"{record['seconds']} s",
            flush=True,
        )
        return record

    def teacher(self) -> torch.nn.Module:
        """The shared teacher fine-tuned on the JPEG train split (cifar_table.py's recipe), tested before and after."""
        a = self.args
        shared = create_model("resnet20", num_classes=10, in_channels=3, pretrained=a.teacher)
        if not self.log.has("teacher_before"):
            top1 = evaluate(shared.to(self.device), self.test_loader(), device=self.device)["top1"]
            self.log.add({"key": "teacher_before", "method": "fp", "bits": 32, "test_top1": top1})
        if "test_top1" not in (self.log.get("teacher") or {}):
            cfg = TrainConfig(
                epochs=a.teacher_epochs,
                optimizer="sgd",
                lr=0.01,
                nesterov=True,
                weight_decay=5e-4,
                device=a.device,
                progress=False,
            )
            data = replace(self.data, subset=a.teacher_subset, batch_size=128)
            self.fit("teacher", shared, None, "qat", cfg, data, {"method": "fp", "bits": 32})
        teacher = create_model("resnet20", num_classes=10, in_channels=3)
        teacher.load_state_dict(load_checkpoint(Path(a.out) / "teacher" / "best.pt", map_location="cpu")["student"])
        return teacher.eval()

    def student_cfg(self, epochs: int) -> TrainConfig:
        return TrainConfig(
            epochs=epochs,
            lr=1e-3,
            quant_lr=1e-5,
            device=self.args.device,
            progress=False,
            hessian_probes=self.args.hessian_probes,
            compile_quantizers=self.args.compile_quantizers,
        )

    def student(self, teacher: torch.nn.Module, method: str, bits: int, epochs: int, key: str) -> dict[str, Any]:
        quant = QuantConfig(method="ewgs", weight_bits=bits, act_bits=bits)
        row = {"method": method, "quantizer": "ewgs", "bits": bits, "seed": 0, "probe": key == PROBE}
        return self.fit(key, teacher, quant, method, self.student_cfg(epochs), self.data, row)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/cifar10-jpeg.tar.gz", help="CIFAR-10 JPEG archive or folder")
    p.add_argument(
        "--teacher", default="../shared/teachers/resnet20-12fca82f.th", help="ResNet-20 state dict to fine-tune"
    )
    p.add_argument("--minutes", type=float, default=9.0, help="wall-clock budget of the whole run, from start")
    p.add_argument("--epochs", type=int, default=None, help="fixed student epochs (default: sized from the probe)")
    p.add_argument(
        "--min-epochs", type=int, default=20, help="W1A1 / W4A4 pairs run only if each job still gets this many"
    )
    p.add_argument("--max-epochs", type=int, default=1200, help="the paper's schedule")
    p.add_argument("--subset", type=int, default=None, help="student training images (default all 50k; 10%% held out)")
    p.add_argument("--test-subset", type=int, default=None, help="test images (default all 10k)")
    p.add_argument("--teacher-subset", type=int, default=10000)
    p.add_argument("--teacher-epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--hessian-probes", type=int, default=2, help="train.hessian_probes of the EWGS delta update")
    p.add_argument("--device", default="cuda")
    p.add_argument("--compile-quantizers", action="store_true", help="train.compile_quantizers (torch.compile kernels)")
    p.add_argument("--out", default="runs/gpu_schedule")
    p.add_argument("--cache-dir", default=None, help="decoded-image cache (default: the library's, ~/.cache/qdistill)")
    p.add_argument("--results", type=Path, default=RESULTS, help="folder of the result log")
    p.add_argument("--name", default="gpu_schedule", help="result log name")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="CPU, a tiny subset, 1 epoch, results under OUT (fake data if --data is absent)",
    )
    args = p.parse_args(argv)
    started = time.perf_counter()
    if args.smoke:  # no time left after the probe: the plan is the W2A2 pair at 1 epoch
        args.device, args.minutes, args.batch_size, args.hessian_probes, args.results = (
            "cpu",
            0.0,
            16,
            1,
            Path(args.out),
        )
        args.subset, args.test_subset, args.teacher_subset = args.subset or 100, args.test_subset or 50, 100
        if not Path(args.data).exists():
            args.data, args.cache_dir = str(fake_cifar(Path(args.out) / "fake-cifar")), f"{args.out}/cache"
        if not Path(args.teacher).exists():
            args.teacher = None
    torch.manual_seed(0)
    budget = {
        "teacher_finetune": f"{args.teacher_subset} JPEG train images, {args.teacher_epochs} epoch(s), SGD 0.01 cosine",
        "student": f"{args.subset or 50000} train images (10% held out for model selection), batch {args.batch_size}, "
        "Adam 1e-3 (quantizers 1e-5), cosine, epochs sized from the probe (see plan)",
        "test_images": args.test_subset or 10000,
        "time_budget_minutes": args.minutes,
        "hardware": hardware(),
    }
    log = ResultLog(args.name, {"dataset": "CIFAR-10 JPEG", "model": "resnet20", "budget": budget}, root=args.results)
    log.save()
    schedule = Schedule(args, log)
    teacher = schedule.teacher()
    plan = log.meta.get("plan")
    if plan is None:
        if args.epochs is not None:
            plan = {"jobs": [job_key(m, b) for m, b in JOBS], "epochs": args.epochs}
        else:
            probe = log.get(PROBE) or {}
            if "test_top1" not in probe:
                probe = schedule.student(teacher, "sqakd", 2, 1, PROBE)
            epoch_s = probe["first_epoch_seconds"]
            left = args.minutes * 60 - (time.perf_counter() - started) - 10  # 10 s for the last writes
            jobs, epochs = plan_epochs(left, epoch_s, probe["seconds"] - epoch_s, args.min_epochs, args.max_epochs)
            plan = {
                "jobs": [job_key(m, b) for m, b in JOBS[:jobs]],
                "epochs": epochs,
                "probe_epoch_seconds": round(epoch_s, 2),
                "probe_overhead_seconds": round(probe["seconds"] - epoch_s, 2),
                "seconds_left_after_probe": round(left, 1),
            }
        log.meta["plan"] = plan
        log.save()
    print("plan:", plan, flush=True)
    for method, bits in JOBS:
        key = job_key(method, bits)
        if key not in plan["jobs"] or "test_top1" in (log.get(key) or {}):
            continue
        if (
            "probe_epoch_seconds" in plan and not args.smoke
        ):  # a rerun gets a fresh --minutes: don't start what cannot end
            need = plan["probe_overhead_seconds"] + plan["epochs"] * plan["probe_epoch_seconds"]
            if time.perf_counter() - started + need > args.minutes * 60:
                print(f"stopping before {key}: it needs about {need:.0f} s; rerun the command to resume", flush=True)
                break
        schedule.student(teacher, method, bits, plan["epochs"], key)
    print(f"done in {time.perf_counter() - started:.0f} s; results in {log.path}", flush=True)


if __name__ == "__main__":
    main()

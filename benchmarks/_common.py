"""Shared helpers of the benchmark scripts: an append-only, resumable JSON result log and run timing."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from qdistill import QuantConfig, TrainConfig
from qdistill.experiment import DataConfig, MethodConfig, ModelConfig, RunConfig, run_experiment

__all__ = ["FMNIST_MODEL", "FMNIST_ROOT", "FMNIST_TEACHER", "RESULTS", "ResultLog", "add_job_filters", "add_student_args", "hardware", "record_run", "select_jobs", "student_budget",
           "student_run", "timed_run"]

RESULTS = Path(__file__).resolve().parent / "results"

# The Fashion-MNIST setup shared by Table 1, Table 3 and the figures: one place to change it.
FMNIST_ROOT = "../shared/data/fashion-mnist"
FMNIST_MODEL = "smallcnn28"
FMNIST_TEACHER = "runs/bench/fmnist/teacher/model.pt"


def hardware() -> str:
    """One line naming the machine the numbers come from."""
    if torch.cuda.is_available():
        return f"GPU {torch.cuda.get_device_name(0)}"
    return f"{os.cpu_count()}-core CPU ({platform.machine()}, shared), torch threads={torch.get_num_threads()}"


class ResultLog:
    """``benchmarks/results/NAME.json``: ``{"meta": {...}, "results": [...]}``, rewritten atomically after each result.

    Each result has a unique ``key``; `has` lets a rerun skip what is already there (resume).
    """

    def __init__(self, name: str, meta: dict[str, Any]) -> None:
        self.path = RESULTS / f"{name}.json"
        data = json.loads(self.path.read_text()) if self.path.exists() else {"results": []}
        self.results: list[dict[str, Any]] = data["results"]
        self.meta = {**data.get("meta", {}), **meta}

    def has(self, key: str) -> bool:
        return any(r["key"] == key for r in self.results)

    def get(self, key: str) -> dict[str, Any] | None:
        return next((r for r in self.results if r["key"] == key), None)

    def add(self, record: dict[str, Any]) -> None:
        if self.path.exists():  # merge what another process may have added meanwhile
            on_disk = json.loads(self.path.read_text())["results"]
            mine = {r["key"] for r in self.results}
            self.results += [r for r in on_disk if r["key"] not in mine]
        record = {**record, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        self.results = [r for r in self.results if r["key"] != record["key"]] + [record]
        self.save()

    def save(self) -> None:
        RESULTS.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")  # workers sharing a log never share a temp file
        tmp.write_text(json.dumps({"meta": self.meta, "results": self.results}, indent=1))
        tmp.replace(self.path)


def timed_run(cfg: RunConfig) -> dict[str, Any]:
    """`run_experiment` plus wall seconds and the per-epoch validation history (from OUT/metrics.json)."""
    start = time.perf_counter()
    res = run_experiment(cfg)
    res["seconds"] = round(time.perf_counter() - start, 1)
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
    p.add_argument("--shard", type=_shard, default=(0, 1), help="K/N: every N-th job from the K-th (one worker per core, each with its own --name)")


def select_jobs(args: argparse.Namespace, jobs: list[tuple[str, str, int, int]]) -> list[tuple[str, str, int, int]]:
    """The jobs the `add_job_filters` options keep, in their priority order."""
    k, n = args.shard
    return [(m, q, b, s) for m, q, b, s in jobs[k::n]
            if b in args.bits and (not args.methods or m in args.methods) and (not args.quantizers or q in args.quantizers)]  # fmt: skip


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
    return {"student": f"EWGS W{args.bits}A{args.bits}, {args.subset or 60000} train images (10% held out), {args.epochs} epoch(s), Adam 1e-3",
            "test_images": args.test_subset or 10000, "hardware": hardware()}  # fmt: skip


def student_run(args: argparse.Namespace, method: MethodConfig, seed: int, key: str) -> RunConfig:
    """One student of such a study, trained with ``method``, written to ``OUT/key``."""
    data = DataConfig(format="idx", root=FMNIST_ROOT, subset=args.subset, test_subset=args.test_subset)
    return RunConfig(model=ModelConfig(FMNIST_MODEL, pretrained=args.teacher), data=data,
                     quant=QuantConfig(method="ewgs", weight_bits=args.bits, act_bits=args.bits), method=method,
                     train=TrainConfig(epochs=args.epochs, progress=False, device="cpu", hessian_probes=1, seed=seed),
                     out=f"{args.out}/{key}")  # fmt: skip

"""`qdistill run`: the whole story on the bundled 8x8 digits, in about a minute on a laptop CPU.

1. Train a small full-precision CNN with labels: it stands in for *your* pretrained model.
2. Make a label-free low-bit student from it (SQAKD by default: KL to the teacher, no labels).
   Ensemble methods (``ekd``) also train a ResNet-20 teacher (for a third of the epochs: it
   learns digits fast) and distil from both teachers.
3. Train the supervised-QAT baseline (cross-entropy on labels) at the same bit width.
4. Print and save a table: top-1, bits, whether labels were used, weight storage.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from qdistill.distill.objectives import OBJECTIVES
from qdistill.experiment import DataConfig, MethodConfig, ModelConfig, RunConfig, check_out, run_experiment
from qdistill.quant.config import QuantConfig
from qdistill.rundir import ensure_writable
from qdistill.train.config import TrainConfig

__all__ = ["format_table", "run_demo"]


def run_demo(
    out: str | Path = "runs/demo",
    method: str = "sqakd",
    quantizer: str = "ewgs",
    bits: int = 2,
    epochs: int = 30,
    seed: int = 0,
    method_params: dict[str, Any] | None = None,
    progress: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run teacher -> label-free student -> supervised baseline on digits; write ``OUT/results.json``.

    The same arguments give the same numbers; runs of other arguments in ``out`` are replaced
    only with ``overwrite``.
    """
    out = Path(out)
    data = DataConfig(format="digits", batch_size=64, val_fraction=0.1, seed=seed)
    train = TrainConfig(epochs=epochs, optimizer="adam", lr=2e-3, seed=seed, progress=progress, hessian_probes=1)
    model = ModelConfig(name="smallcnn")
    quant = QuantConfig(method=quantizer, weight_bits=bits, act_bits=bits)
    started = time.perf_counter()
    ensure_writable(out)

    teacher_cfg = RunConfig(
        model=model, data=data, quant=None, method=MethodConfig("qat"), train=train, out=str(out / "teacher")
    )
    runs = {"teacher (FP32)": teacher_cfg}
    pretrained = replace(model, pretrained=teacher_cfg.out)  # the run folder: its model.safetensors
    teachers: tuple[ModelConfig, ...] = ()
    if OBJECTIVES.get(method).ensemble:  # a second teacher of another architecture
        second = replace(
            teacher_cfg,
            model=ModelConfig(name="resnet20"),
            out=str(out / "teacher_resnet20"),
            train=replace(train, epochs=max(1, epochs // 3)),
        )
        runs["teacher 2: resnet20 (FP32)"] = second
        teachers = (pretrained, replace(second.model, pretrained=second.out))
    student_train = replace(train, lr=1e-3)
    runs["student"] = RunConfig(
        model=pretrained,
        data=data,
        quant=quant,
        train=student_train,
        teachers=teachers,
        method=MethodConfig(method, dict(method_params or {})),
        out=str(out / f"student_{method}"),
    )
    runs["supervised QAT baseline"] = replace(
        runs["student"], method=MethodConfig("qat"), teachers=(), out=str(out / "baseline_qat")
    )
    for cfg in runs.values():  # refuse another run's folder before training anything
        check_out(cfg, overwrite=overwrite)
    rows: dict[str, Any] = {}
    for name, cfg in runs.items():
        result = run_experiment(cfg, overwrite=overwrite)
        if name == "student":
            name = f"{method} student" + ("" if result["labels_used"] else " (label-free)")
        rows[name] = result

    summary = {
        "dataset": "digits (8x8)",
        "quantizer": quantizer,
        "bits": f"W{bits}A{bits}",
        "seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    return summary


def format_table(summary: dict[str, Any]) -> str:
    """A plain-text table of a `run_demo` summary."""
    head = f"{'model':34} {'top-1':>7} {'bits':>7} {'labels':>7} {'size':>9}"
    lines = [
        f"{summary['dataset']}, {summary['quantizer']} {summary['bits']}, {summary['seconds']} s",
        head,
        "-" * len(head),
    ]
    for name, r in summary["rows"].items():
        bits = f"W{r['weight_bits']}A{r['act_bits']}"
        size = f"{r['size_bytes'] / 1024:.1f} KiB"
        lines.append(
            f"{name:34} {r.get('test_top1', float('nan')):7.2f} {bits:>7} "
            f"{'yes' if r['labels_used'] else 'no':>7} {size:>9}"
        )
    return "\n".join(lines)

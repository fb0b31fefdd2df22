"""Compare every distillation method on the same data and budget: digits, smallcnn, W1A1/W2A2/W4A4.

    python benchmarks/methods_table.py [--epochs 15] [--quantizer ewgs] [--out runs/methods_table]

Trains the FP32 smallcnn teacher (and, for ``ekd``, a second ResNet-20 teacher) once, then one
student per (method, bit width). Each result is appended to ``OUT/results_QUANTIZER.json`` as soon
as it exists, so an interrupted run keeps what it has and a rerun skips what is done; the markdown
table of that quantizer in ``docs/methods.md`` (between its ``methods-table`` markers) is rewritten
after every result.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from qdistill.distill import BASELINES, OBJECTIVES
from qdistill.experiment import DataConfig, MethodConfig, ModelConfig, RunConfig, run_experiment
from qdistill.quant.config import QuantConfig
from qdistill.train.config import TrainConfig

METHODS = ("qat", "sqakd", "squat", "gor", "ekd", *BASELINES)
BITS = (2, 1, 4)  # W2A2 first: the headline setting survives an early interruption
DOCS = Path(__file__).resolve().parents[1] / "docs" / "methods.md"


def _markers(quantizer: str) -> tuple[str, str]:
    return f"<!-- methods-table:{quantizer}:start -->", f"<!-- methods-table:{quantizer}:end -->"


def _teacher(name: str, out: Path, data: DataConfig, train: TrainConfig) -> ModelConfig:
    """Train (once) an FP32 teacher with labels; return its model config with weights."""
    weights = out / f"teacher_{name}" / "model.pt"
    if not weights.is_file():
        run_experiment(RunConfig(model=ModelConfig(name=name), data=data, quant=None, method=MethodConfig("qat"),
                                 train=train, out=str(weights.parent)))  # fmt: skip
    return ModelConfig(name=name, pretrained=str(weights))


def markdown(results: dict[str, dict], quantizer: str, command: str) -> str:
    """The comparison table: one row per method, one column per bit width (test top-1, %)."""
    start, end = _markers(quantizer)
    lines = [start, "", f"Quantizer `{quantizer}`:", "", "| method | labels | W1A1 | W2A2 | W4A4 |"]
    lines.append("|---|---|---|---|---|")
    for method in METHODS:
        cells = [results.get(f"{method}/W{b}A{b}", {}).get("test_top1") for b in (1, 2, 4)]
        if all(c is None for c in cells):
            continue
        labels = next((r["labels_used"] for k, r in results.items() if k.startswith(f"{method}/")), None)
        row = " | ".join("-" if c is None else f"{c:.2f}" for c in cells)
        lines.append(f"| `{method}` | {'yes' if labels else 'no'} | {row} |")
    lines += ["", f"Reproduce: `{command}`", "", end]
    return "\n".join(lines)


def write_docs(table: str, quantizer: str) -> None:
    text = DOCS.read_text() if DOCS.is_file() else ""
    start, end = _markers(quantizer)
    if start in text and end in text:
        text = text[: text.index(start)] + table + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + table + "\n"
    DOCS.write_text(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--teacher-epochs", type=int, default=30)
    p.add_argument("--quantizer", default="ewgs")
    p.add_argument("--methods", nargs="*", default=list(METHODS))
    p.add_argument("--out", default="runs/methods_table")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = out / f"results_{args.quantizer}.json"
    results: dict[str, dict] = json.loads(store.read_text()) if store.is_file() else {}
    command = f"python benchmarks/methods_table.py --epochs {args.epochs} --quantizer {args.quantizer}"
    if results:
        write_docs(markdown(results, args.quantizer, command), args.quantizer)

    data = DataConfig(format="digits", batch_size=64, val_fraction=0.1)
    train = TrainConfig(epochs=args.teacher_epochs, lr=2e-3, progress=False, hessian_probes=1)
    teacher = _teacher("smallcnn", out, data, train)
    second = _teacher("resnet20", out, data, train) if "ekd" in args.methods else None
    student_train = replace(train, epochs=args.epochs, lr=1e-3)
    for bits in BITS:
        for method in args.methods:
            key = f"{method}/W{bits}A{bits}"
            if key in results:
                continue
            teachers = (teacher, second) if OBJECTIVES.get(method).ensemble else ()
            cfg = RunConfig(model=teacher, data=data, quant=QuantConfig(method=args.quantizer, weight_bits=bits,
                            act_bits=bits), method=MethodConfig(method), train=student_train, teachers=teachers,
                            out=str(out / args.quantizer / method / f"W{bits}A{bits}"))  # fmt: skip
            started = time.perf_counter()
            r = run_experiment(cfg)
            results[key] = {**r, "seconds": round(time.perf_counter() - started, 1)}
            store.write_text(json.dumps(results, indent=1))
            write_docs(markdown(results, args.quantizer, command), args.quantizer)
            print(f"{key:14} top-1 {r.get('test_top1', float('nan')):6.2f}  ({results[key]['seconds']} s)", flush=True)


if __name__ == "__main__":
    main()

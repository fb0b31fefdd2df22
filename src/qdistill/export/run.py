"""Export a trained run folder (what `qdistill export` does)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from qdistill.errors import ConfigError
from qdistill.export.card import write_model_card
from qdistill.export.onnx import export_onnx, require_writable
from qdistill.export.packed import export_packed, load_packed
from qdistill.export.parity import check_min_agreement, compare_logits, require_parity, torch_logits

__all__ = ["export_run"]

FORMATS = ("onnx", "packed")


def _calibration_images(cfg: Any, count: int) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, Any]]:
    """The first ``count`` images of the run's test split (else its validation/training split),
    normalised, with their labels when the split has them (only to report accuracy), and what a
    deployment needs to know about the inputs (normalisation, class names)."""
    from qdistill.data import BatchLoader
    from qdistill.experiment import prepare_data

    splits, train, val, test = prepare_data(cfg.data)
    data = next(d for d in (test, val, train) if d is not None)
    batch = next(iter(BatchLoader(data, count, mean=splits.mean, std=splits.std, with_labels=data.labels is not None)))
    images, labels = (batch[0], batch[1]) if isinstance(batch, (list, tuple)) and len(batch) == 2 else (batch, None)
    meta: dict[str, Any] = {
        "mean": list(splits.mean),
        "std": list(splits.std),
        "input_scale": "[0, 1] before (x - mean) / std",
    }
    if data.classes is not None:
        meta["classes"] = list(data.classes)
    return images, labels, meta


def _held_out_lines(cfg: Any, count: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """A text classifier run's first ``count`` held-out lines, tokenized as in training, and their labels."""
    from qdistill.hf_experiment import classifier_test_lines
    from qdistill.models.hf import load_hf_tokenizer

    rows = classifier_test_lines(cfg.data, load_hf_tokenizer(cfg.model.pretrained), count)
    return {k: v for k, v in rows.items() if k != "labels"}, rows["labels"]


def _recorded(run_dir: Path, state: dict[str, Any], key: str) -> Any:
    """A fact the run recorded: results.json, then model.json, then the checkpoint's meta."""
    for name in ("results.json", "model.json"):
        f = run_dir / name
        if f.is_file():
            value = json.loads(f.read_text()).get(key)
            if value is not None:
                return value
    return state.get("meta", {}).get(key)


def _teacher(cfg: Any) -> str:
    from qdistill.distill import OBJECTIVES

    if cfg.model.source == "hf":
        return str(cfg.model.pretrained)
    if not getattr(OBJECTIVES.get(cfg.method.name), "needs_teacher", True):
        return f"none (method {cfg.method.name} trains without one)"
    if cfg.teachers:
        return "ensemble of " + ", ".join(f"{t.name} ({t.pretrained or 'random init'})" for t in cfg.teachers)
    if cfg.model.source == "hf":
        return str(cfg.model.pretrained)
    if cfg.model.pretrained:
        return f"{cfg.model.name} ({cfg.model.pretrained})"
    return f"{cfg.model.name}, random init (model.pretrained not set)"


def _card_facts(run_dir: Path, cfg: Any, state: dict[str, Any]) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "architecture": f"{cfg.model.pretrained} (Hugging Face)" if cfg.model.source == "hf" else cfg.model.name,
        "method": f"{cfg.quant.method} W{cfg.quant.weight_bits}A{cfg.quant.act_bits or 32}"
        if cfg.quant
        else "none (FP32)",
        "objective": cfg.method.name,
        "teacher": _teacher(cfg),
        "labels_used": _recorded(run_dir, state, "labels_used"),
    }
    results = run_dir / "results.json"
    if results.is_file():
        r = json.loads(results.read_text())
        test = {
            k.removeprefix("test_"): v for k, v in r.items() if k.startswith("test_") and isinstance(v, (int, float))
        }
        facts["accuracy"] = (
            ", ".join(f"test {k} {v:.2f}%" for k, v in test.items()) or "no test metrics in results.json"
        )
    return facts


def export_run(
    run_dir: str | Path,
    fmt: str = "onnx",
    out: str | Path | None = None,
    min_agreement: float = 99.5,
    residual: str = "float",
    images: int = 1000,
    threads: int = 2,
) -> dict[str, Any]:
    """Export the best student of ``run_dir`` as ``onnx`` or ``packed``; return the report.

    A ``model.source: hf`` run: a text classifier (``model.task: sequence_classification``) exports
    to ONNX, checked on its held-out lines; a causal LM as ``packed`` Hugging Face safetensors
    (`qdistill.export.hf_packed`), checked on ``images`` held-out tokens."""
    from qdistill.experiment import load_run

    min_agreement = check_min_agreement(min_agreement)
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    run_dir = Path(run_dir)
    out = Path(out or run_dir / ("model.onnx" if fmt == "onnx" else "model.packed.safetensors"))
    require_writable(out.parent)
    model, cfg, state = load_run(run_dir)
    card = _card_facts(run_dir, cfg, state)
    if cfg.model.source == "hf":
        classifier = type(model).__name__.endswith("ForSequenceClassification")
        if classifier != (fmt == "onnx"):
            want = "onnx" if classifier else "packed"
            raise ConfigError(
                f"export: {run_dir} is a Hugging Face {type(model).__name__} run: export it with --format {want}"
            )
        if not classifier:
            return _export_hf_run(run_dir, out, model, cfg, state, images, min_agreement)
        calib, labels = _held_out_lines(cfg, images)
        example, options = {k: v[:8] for k, v in calib.items()}, {}
    else:
        calib, labels, metadata = _calibration_images(cfg, images)
        example, options = calib[:8], {"metadata": metadata, "fp32_reference": True, "ort_build": True}
    if fmt == "onnx":
        return export_onnx(
            model,
            example,
            out,
            calib=calib,
            labels=labels,
            residual=residual,
            min_agreement=min_agreement,
            threads=threads,
            card=card,
            **options,
        )
    meta = state.get("meta", {})
    arch = {
        "name": cfg.model.name,
        "num_classes": meta.get("num_classes") or cfg.model.num_classes,
        "in_channels": meta.get("in_channels", calib.shape[1]),
    }
    header, parity = _write_checked(
        out,
        lambda tmp: export_packed(model, tmp, arch=arch, meta={"run": str(run_dir)})["layers"],
        load_packed,
        lambda m: torch_logits(m, calib),
        model,
        min_agreement,
    )
    return _packed_report(out, parity, card, header)


def _write_checked(
    out: Path,
    write: Callable[[Path], dict[str, Any]],
    reload: Callable[[Path], nn.Module],
    logits: Callable[[nn.Module], np.ndarray],
    model: nn.Module,
    min_agreement: float,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``write`` the model to ``out`` through a ``.partial`` file that moves into place only when the
    ``reload``-ed file's logits agree with ``model``'s; returns what ``write`` returned and the parity."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    written = write(tmp)
    reference, rebuilt = logits(model), logits(reload(tmp))
    parity = compare_logits(reference, rebuilt)
    parity["bit_exact"] = bool((reference == rebuilt).all())
    parity["threshold"] = min_agreement
    try:
        require_parity(parity, min_agreement, str(out))
    except RuntimeError:
        tmp.unlink()
        raise
    tmp.replace(out)
    return written, parity


def _packed_report(out: Path, parity: dict[str, Any], card: dict[str, Any], layers: dict[str, Any]) -> dict[str, Any]:
    """The export report (also ``<out>.json``) and the model card next to the packed file."""
    report = {
        "format": "packed safetensors",
        "parity": parity,
        "file_bytes": out.stat().st_size,
        **card,
        "layers": [
            {"name": n, "weight_bits": lq["bits"], "act_bits": lq["act_bits"], "weight": f"{lq['bits']}-bit packed"}
            for n, lq in layers.items()
        ],
    }
    Path(str(out) + ".json").write_text(json.dumps(report, indent=1))
    write_model_card(out, report)
    return report


def _export_hf_run(
    run_dir: Path, out: Path, model: nn.Module, cfg: Any, state: dict[str, Any], tokens: int, min_agreement: float
) -> dict[str, Any]:
    """A ``model.source: hf`` run as packed Hugging Face safetensors (`export_hf_packed`), checked on
    about ``tokens`` of its held-out text (else its training text) against the trained student."""
    from qdistill.batch import logits_of
    from qdistill.export.hf_packed import export_hf_packed, load_hf_packed
    from qdistill.hf_experiment import load_text_blocks
    from qdistill.models.hf import build_hf_model, load_hf_tokenizer

    text = load_text_blocks(cfg.data, load_hf_tokenizer(str(run_dir)))  # the run folder holds the tokenizer
    blocks = text.test if text.test is not None else text.train
    ids = blocks[: max(1, -(-tokens // text.block_size))]

    def logits(m: nn.Module) -> np.ndarray:
        with torch.no_grad():
            return logits_of(m(input_ids=ids)).flatten(0, -2).float().numpy()

    layers, parity = _write_checked(
        out,
        lambda tmp: export_hf_packed(model, tmp),
        lambda tmp: load_hf_packed(tmp, build_hf_model(run_dir, cfg.model.task)),
        logits,
        model,
        min_agreement,
    )
    parity["unit"] = "tokens"
    card = _card_facts(run_dir, cfg, state) | {"architecture": type(model).__name__}
    results = run_dir / "results.json"
    r = json.loads(results.read_text()) if results.is_file() else {}
    if "ppl" in r:
        card["accuracy"] = f"held-out perplexity {r['ppl']:.3f} (teacher {r['teacher_ppl']:.3f})"
    return _packed_report(out, parity, card, layers)

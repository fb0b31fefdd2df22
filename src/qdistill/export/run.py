"""Export a trained run folder (what `qdistill export` does)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from qdistill.export.card import write_model_card
from qdistill.export.onnx import export_onnx
from qdistill.export.packed import export_packed, load_packed
from qdistill.export.parity import compare_logits, require_parity, torch_logits

__all__ = ["export_run"]

LABELLED_METHODS = ("qat", "ce_kd")


def _calibration_images(cfg: Any, count: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The first ``count`` images of the run's test split (else its validation/training split),
    normalised, with their labels when the split has them (only to report accuracy)."""
    from qdistill.data import BatchLoader
    from qdistill.experiment import prepare_data

    splits, train, val, test = prepare_data(cfg.data)
    data = next(d for d in (test, val, train) if d is not None)
    batch = next(iter(BatchLoader(data, count, mean=splits.mean, std=splits.std, with_labels=data.labels is not None)))
    return (batch[0], batch[1]) if isinstance(batch, (list, tuple)) and len(batch) == 2 else (batch, None)


def _card_facts(run_dir: Path, cfg: Any) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "architecture": cfg.model.name,
        "method": f"{cfg.quant.method} W{cfg.quant.weight_bits}A{cfg.quant.act_bits or 32}" if cfg.quant else "none (FP32)",
        "objective": cfg.method.name,
        "teacher": cfg.model.pretrained or "not recorded",
        "labels_used": cfg.method.name in LABELLED_METHODS,
    }
    results = run_dir / "results.json"
    if results.is_file():
        r = json.loads(results.read_text())
        acc = {k: v for k, v in r.items() if "acc" in k and isinstance(v, (int, float))}
        facts["accuracy"] = ", ".join(f"{k} {v:.2f}" for k, v in acc.items()) or "see results.json"
    return facts


def export_run(
    run_dir: str | Path, fmt: str = "onnx", out: str | Path | None = None, min_agreement: float = 99.5,
    residual: str = "float", images: int = 1000, threads: int = 2,
) -> dict[str, Any]:
    """Export the best student of ``run_dir`` as ``onnx`` or ``packed``; return the report."""
    from qdistill.experiment import load_run

    run_dir = Path(run_dir)
    model, cfg, state = load_run(run_dir)
    calib, labels = _calibration_images(cfg, images)
    card = _card_facts(run_dir, cfg)
    if fmt == "onnx":
        out = Path(out or run_dir / "model.onnx")
        return export_onnx(model, calib[:8], out, calib=calib, labels=labels, residual=residual, min_agreement=min_agreement,
                           threads=threads, card=card, fp32_reference=True, ort_build=True)  # fmt: skip
    if fmt != "packed":
        raise ValueError(f"unknown format {fmt!r}; choose onnx or packed")
    out = Path(out or run_dir / "model.safetensors")
    meta = state.get("meta", {})
    arch = {"name": cfg.model.name, "num_classes": meta.get("num_classes") or cfg.model.num_classes,
            "in_channels": meta.get("in_channels", calib.shape[1])}  # fmt: skip
    tmp = out.with_name(out.name + ".partial")
    header = export_packed(model, tmp, arch=arch, meta={"run": str(run_dir)})
    reference, rebuilt = torch_logits(model, calib), torch_logits(load_packed(tmp), calib)
    parity = compare_logits(reference, rebuilt)
    parity["bit_exact"] = bool((reference == rebuilt).all())
    parity["threshold"] = min_agreement
    try:
        require_parity(parity, min_agreement, str(out))
    except RuntimeError:
        tmp.unlink()
        raise
    tmp.replace(out)
    report = {"format": "packed safetensors", "parity": parity, "file_bytes": out.stat().st_size, **card,
              "layers": [{"name": n, "weight_bits": lq["bits"], "act_bits": lq["act_bits"], "weight": f"{lq['bits']}-bit packed"}
                         for n, lq in header["layers"].items()]}  # fmt: skip
    Path(str(out) + ".json").write_text(json.dumps(report, indent=1))
    write_model_card(out, report)
    return report


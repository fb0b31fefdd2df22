"""A markdown model card written next to every exported artefact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["write_model_card"]


def _size(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1024**2 else f"{n / 1024**2:.2f} MiB"


def _input(meta: dict[str, Any] | None) -> str:
    """Input size and normalisation (or input names and sequence length), as stored in the ONNX metadata."""
    if not meta:
        return "not recorded"
    parts = ["x".join(str(v) for v in meta["input_size"])] if "input_size" in meta else []
    parts += [f"{k} {meta[k]}" for k in ("mean", "std") if k in meta]
    if "input_names" in meta:  # transformers: named inputs, the example's sequence length
        parts.append(" + ".join(meta["input_names"]))
    if "sequence_length" in meta:
        parts.append(f"{meta['sequence_length']} tokens in the example (dynamic)")
    return ", ".join(parts) or "not recorded"


def write_model_card(artefact: str | Path, info: dict[str, Any]) -> Path:
    """Write ``<artefact>.md``: what the model is, how it was made, how faithful and fast it is.

    ``info`` keys used (all optional except ``layers``): ``architecture``, ``method``,
    ``objective``, ``teacher``, ``labels_used``, ``accuracy``, ``metadata``, ``parity``, ``latency``,
    ``format``, ``layers`` (one dict per layer with ``name``, ``weight_bits``, ``act_bits``,
    ``weight``), ``notes``.
    """
    artefact = Path(artefact)
    unknown = "not recorded"
    lines = [f"# Model card: {artefact.name}", ""]
    facts = [
        ("format", info.get("format", unknown)),
        ("architecture", info.get("architecture", unknown)),
        ("quantizer method", info.get("method", unknown)),
        ("training objective", info.get("objective", unknown)),
        ("teacher", info.get("teacher", unknown)),
        ("labels used in training", {True: "yes", False: "no"}.get(info.get("labels_used"), unknown)),
        ("accuracy", info.get("accuracy", unknown)),
        ("input", _input(info.get("metadata"))),
        ("file size", _size(artefact.stat().st_size) if artefact.exists() else unknown),
    ]
    lines += ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in facts] + [""]
    parity = info.get("parity")
    if parity:
        unit = parity.get("unit", "images")
        settled = (
            f"{parity['top1_agreement_decisive']:.2f}% on the {parity['decisive_images']} {unit} whose top-1 "
            "the trained model's float arithmetic settles (the gate's figure), "
            if "decisive_images" in parity
            else ""
        )
        lines += [
            "## Parity with the trained (fake-quant) PyTorch model",
            "",
            f"{parity['images']} {unit}: top-1 agreement {settled}{parity['top1_agreement']:.2f}% on all; "
            f"max |logit difference| {parity['max_abs_logit_diff']:.4g}"
            + (f" (threshold {parity['threshold']}%)." if "threshold" in parity else "."),
            "",
        ]
        if "top1_exported" in parity:
            lines += [
                f"Top-1 accuracy on these labelled {unit}: trained model {parity['top1_trained']:.2f}%, "
                f"exported model {parity['top1_exported']:.2f}%.",
                "",
            ]
    ort = info.get("ort_build")
    if ort:
        lines += [
            "## ONNX Runtime build",
            "",
            f"`{Path(ort['path']).name}`: ONNX Runtime's fused graph with the residual stream kept channels-last "
            f"(runs in ONNX Runtime only). Top-1 agreement {ort['parity']['top1_agreement']:.2f}% on all images; logits identical "
            f"to the QDQ file: {'yes' if ort['identical_to_qdq'] else 'no'}; latency at batch 1: "
            f"{ort['latency'][0]['latency_ms']:.2f} ms.",
            "",
        ]
    latency = info.get("latency")
    if latency:
        lines += ["## Measured latency", "", "| batch | latency (ms) | images/s | threads |", "|---|---|---|---|"]
        lines += [
            f"| {r['batch']} | {r['latency_ms']:.2f} | {r['images_per_s']:.0f} | {r.get('threads', '')} |"
            for r in latency
        ]
        lines += ["", "Measured on the exporting machine; other processes may have been running.", ""]
    lines += ["## Layers", "", "| layer | weight bits | activation bits | stored as |", "|---|---|---|---|"]
    for layer in info.get("layers", []):
        lines.append(
            f"| {layer['name']} | {layer.get('weight_bits') or 32} | {layer.get('act_bits') or 32} | {layer.get('weight', '')} |"
        )
    if info.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in info["notes"]]
    path = artefact.with_name(artefact.name + ".md")
    path.write_text("\n".join(lines) + "\n")
    return path

"""`export_onnx`: a QDQ ONNX file that ONNX Runtime runs with integer kernels, checked for parity."""

from __future__ import annotations

import copy
import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from qdistill.errors import ConfigError, ExportError
from qdistill.export.bench import measure, ort_session
from qdistill.export.card import write_model_card
from qdistill.export.graph import UnsupportedOp, build_onnx
from qdistill.export.ort_layout import ort_optimized
from qdistill.export.parity import (
    check_min_agreement,
    compare_logits,
    decision_tolerance,
    label_top1,
    onnx_logits,
    require_parity,
    torch_logits,
)
from qdistill.export.residual import quantize_float_tensors
from qdistill.quant.base import Quantizer
from qdistill.quant.modules import QuantModule

__all__ = ["RESIDUAL_MODES", "export_onnx", "float_twin", "require_writable", "set_metadata", "snap_biases"]

RESIDUAL_MODES = ("int8", "float")
BIAS_HINT = (
    "; integer kernels round each folded bias to int32 units: train with snap_biases: true in the run "
    "config, or call qdistill.export.snap_biases on the model, to move its biases onto that grid (docs/export.md)"
)


@torch.no_grad()
def float_twin(model: nn.Module) -> nn.Module:
    """A float copy with each quantized layer replaced by its ``to_float()`` (a plain layer holding
    its quantized weight), and every other quantizer (residual sums) by an identity.

    It is the FP32 baseline of the speed comparison: same graph, no quantizers.
    """
    twin = copy.deepcopy(model).eval()
    for name, m in list(twin.named_modules()):
        if not isinstance(m, QuantModule):
            continue
        if not hasattr(m, "to_float"):
            raise ExportError(
                f"float_twin: {name} ({type(m).__name__}) has no to_float(): its layer type does not implement the protocol"
            )
        twin.set_submodule(name, m.to_float())
    for name, m in list(twin.named_modules()):  # what is left: quantizers of residual sums
        if isinstance(m, Quantizer):
            twin.set_submodule(name, nn.Identity())
    return twin


def export_onnx(
    model: nn.Module,
    example: Tensor | Mapping[str, Tensor],
    path: str | Path,
    *,
    calib: Tensor | Mapping[str, Tensor] | None = None,
    labels: Tensor | None = None,
    residual: str = "float",
    min_agreement: float = 99.5,
    threads: int = 2,
    card: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    fp32_reference: bool = False,
    ort_build: bool = False,
    opset: int | None = None,
) -> dict[str, Any]:
    """Export a quantized model to QDQ ONNX at ``path``; return the report stored beside it.

    The parity gate compares the exported file with ``model`` exactly as passed in (it is not
    changed). An integer kernel adds each folded bias as a whole number of int32 units (input
    scale x weight scale); at low bits that rounding alone can flip levels that cascade, and the
    gate then refuses. Run `qdistill.export.snap_biases` on the model first (and evaluate or
    fine-tune the snapped model: it is then the model you ship) to make the export exact.

    Args:
        model: any model whose quantized layers are `QConv2d`/`QLinear` (quantizers calibrated).
        example: an input batch (fixes the image shape; the batch dimension stays dynamic), or
            a dict batch (``input_ids``, ``attention_mask``, ...) for a transformer.
        calib: images (or a dict batch) for the parity check and for residual ranges (default ``example``).
        labels: labels of ``calib``, when known: the report then also gives the top-1 accuracy
            of the trained model and of the exported one.
        residual: ``"int8"`` quantizes the float residual stream to uint8 (fast: every conv and
            add becomes an integer kernel); ``"float"`` keeps it float as trained (exact up to
            float rounding, but convs that feed a float add run in float).
        min_agreement: refuse to write (ExportError) below this margin-aware top-1 agreement, in
            percent (`qdistill.export.parity`); ConfigError unless a number in [0, 100].
        card: extra model-card facts (architecture, method, teacher, accuracy, ...).
        metadata: written into the ONNX file's ``metadata_props`` (e.g. ``mean``, ``std``,
            ``classes``); ``input_size`` (C, H, W of ``example``) is always added. Values that are
            not strings are stored as JSON.
        fp32_reference: also write ``<path>.fp32.onnx``, the float twin, for `qdistill bench`.
        ort_build: also write ``<path>.ort.onnx``: ONNX Runtime's own fused graph with the residual
            stream kept channels-last (`qdistill.export.ort_layout`), faster on ONNX Runtime CPU
            and checked like the QDQ file; it only runs in ONNX Runtime.
        opset: ONNX opset (default 17; 18 for transformers).

    A dict batch ``example`` or a Hugging Face model goes to
    `qdistill.export.transformer.export_transformer_onnx` (torch.onnx front end, same gate and
    files); so does a model with an op qdistill's CNN graph builder does not translate (e.g. SiLU),
    with a note in the report. ``residual``, ``fp32_reference`` and ``ort_build`` need the CNN builder.

    Writes ``path``, ``path + ".json"`` (parity, layers, latency) and ``path + ".md"`` (model card).
    """
    import onnx

    from qdistill.export.transformer import OPSET, export_transformer_onnx, is_transformer

    def torch_onnx_route(meta: dict[str, Any] | None, notes: list[str]) -> dict[str, Any]:
        return export_transformer_onnx(
            model,
            example,
            path,
            calib=calib,
            labels=labels,
            min_agreement=min_agreement,
            threads=threads,
            card=card,
            metadata=meta,
            opset=opset or OPSET,
            notes=notes,
        )

    if is_transformer(model, example):
        if residual != "float" or fp32_reference or ort_build:
            raise ConfigError(
                "export: residual, fp32_reference and ort_build are CNN options; a transformer export takes none"
            )
        return torch_onnx_route(metadata, [])
    min_agreement = check_min_agreement(min_agreement)
    if residual not in RESIDUAL_MODES:
        raise ConfigError(f"residual must be one of {RESIDUAL_MODES}, got {residual!r}")
    path = Path(path)
    require_writable(path.parent)
    model = model.eval()
    if residual == "int8" and getattr(getattr(model, "qdistill_config", None), "residual_bits", None):
        raise ConfigError(
            "export: this model quantizes its residual sums itself (quant.residual_bits); "
            "export it with residual='float', which is then already all-integer"
        )
    calib = example if calib is None else calib
    cnn_opset = opset or 17
    try:
        build = build_onnx(model, example, cnn_opset)
    except UnsupportedOp as e:  # an op qdistill's CNN builder does not know: the torch.onnx route
        if residual != "float" or fp32_reference or ort_build:
            raise ExportError(f"{e}; residual='int8', fp32_reference and ort_build need the CNN builder") from e
        meta = {"input_size": list(example.shape[1:]), **(metadata or {})}
        return torch_onnx_route(meta, [f"{e}: exported through torch.onnx (dynamo)"])
    notes: list[str] = []
    if residual == "int8":
        _, names = quantize_float_tensors(build.model, calib.float().numpy())
        if names:
            notes.append(f"{len(names)} float residual-stream tensors quantized to uint8 for integer kernels")
    meta = {"input_size": list(example.shape[1:]), **(metadata or {})}
    set_metadata(build.model, meta)
    onnx.checker.check_model(build.model)
    blob = build.model.SerializeToString()
    exported = onnx_logits(ort_session(blob, threads), calib)
    trained = torch_logits(model, calib)
    tolerance = decision_tolerance(model, calib, trained)
    parity = compare_logits(trained, exported, tolerance)
    parity["threshold"] = min_agreement
    parity.update(label_top1(trained, exported, labels))
    require_parity(parity, min_agreement, str(path), BIAS_HINT)
    ort_report = None
    if ort_build:
        ort_path = Path(str(path) + ".ort.onnx")
        with tempfile.TemporaryDirectory() as tmp:
            ort_model = ort_optimized(blob, str(Path(tmp) / "optimised.onnx"))
        onnx.helper.set_model_props(ort_model, {p.key: p.value for p in build.model.metadata_props})
        ort_blob = ort_model.SerializeToString()
        ort_logits = onnx_logits(ort_session(ort_blob, threads), calib)
        ort_report = {
            "path": str(ort_path),
            "parity": compare_logits(trained, ort_logits, tolerance),
            "identical_to_qdq": bool((ort_logits == exported).all()),
        }
        require_parity(ort_report["parity"], min_agreement, str(ort_path), BIAS_HINT)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(blob)
    if ort_report is not None:
        Path(ort_report["path"]).write_bytes(ort_blob)
    latency = [dict(measure(ort_session(blob, threads), (1, *example.shape[1:]), 0.5), threads=threads)]
    report = {
        "format": f"onnx (QDQ, opset {cnn_opset}, residual {residual})",
        "parity": parity,
        "latency": latency,
        "layers": build.layers,
        "metadata": meta,
        "file_bytes": path.stat().st_size,
        "notes": notes,
        **(card or {}),
    }
    if ort_report is not None:
        ort_report["latency"] = [
            dict(measure(ort_session(ort_blob, threads), (1, *example.shape[1:]), 0.5), threads=threads)
        ]
        report["ort_build"] = ort_report
    if fp32_reference:
        fp = build_onnx(float_twin(model), example, cnn_opset).model
        onnx.save(fp, str(path) + ".fp32.onnx")
        report["fp32_reference"] = str(path) + ".fp32.onnx"
    Path(str(path) + ".json").write_text(json.dumps(report, indent=1, default=str))
    write_model_card(path, report)
    return report


@torch.no_grad()
def snap_biases(model: nn.Module, example: Tensor) -> dict[str, float]:
    """Move, in place, each integer layer's folded bias onto ONNX Runtime's int32 bias grid.

    An integer kernel adds the BatchNorm-folded bias as ``round(bias / (input scale x weight
    scale))`` int32 units, a move of at most half a unit (about 1e-3 of an output level) that
    low-bit networks can amplify through their depth. Shifting the model's own BatchNorm shift (or
    bias) by the same amount makes model and export compute the same integer sums. The snapped
    model is a slightly different model: evaluate it (or fine-tune it, then snap again) before
    shipping. Returns the move per layer, in grid units (at most 0.5).
    """
    build = build_onnx(model.eval(), example, snap_bias=True)
    return {layer["name"]: layer["bias_shift_levels"] for layer in build.layers if "bias_shift_levels" in layer}


def set_metadata(model: Any, meta: dict[str, Any]) -> None:
    """Write ``meta`` into ``model.metadata_props`` (an onnx ModelProto); non-strings as JSON."""
    import onnx

    onnx.helper.set_model_props(model, {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()})


def require_writable(folder: Path) -> None:
    """ExportError unless ``folder`` (or the nearest existing folder above it) can be written,
    checked before any work is done."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise ExportError(f"export: cannot write into {folder}: {existing} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise ExportError(f"export: cannot write to {existing}: {e.strerror or e}") from None

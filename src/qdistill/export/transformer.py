"""QDQ ONNX for quantized transformer encoders (BERT- and ViT-style classifiers), via torch.onnx.

The fx builder of `qdistill.export.graph` translates CNNs op by op; a transformer's LayerNorm,
GELU, attention and dict inputs are left to ``torch.onnx.export(..., dynamo=True)``. qdistill's
part is the quantization: the model is converted to its integer form (`qdistill.convert`), and
each integer layer is exported through two custom ops whose ONNX translation is fixed here, so
the exporter's constant folding cannot turn them back into float weights:

* ``qdistill::dequantize``: an int8 initialiser (the weight's levels as `intgrid.weight_ints`
  writes them for CNNs) behind a per-channel ``DequantizeLinear``; Linear weights are stored
  transposed, ``(in, out)``, so the DQ feeds the ``MatMul`` directly, as ONNX Runtime's QDQ
  fusions want;
* ``qdistill::quantize_dequantize``: a per-tensor activation grid (`intgrid.act_grid`) as
  ``QuantizeLinear -> Clip (b < 8) -> DequantizeLinear``.

Per-token activation grids have a range per row; ``DynamicQuantizeLinear`` has one per tensor
and would not compute the same levels, so they stay the float min/max/round math they are.
"""

from __future__ import annotations

import copy
import inspect
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qdistill.batch import Inputs
from qdistill.errors import ExportError
from qdistill.export.bench import measure_feeds, ort_session
from qdistill.export.card import write_model_card
from qdistill.export.intgrid import act_grid, weight_ints
from qdistill.export.parity import (
    check_min_agreement,
    compare_logits,
    decision_tolerance,
    feeds_of,
    label_top1,
    onnx_logits,
    require_parity,
    torch_logits,
)
from qdistill.quant.convert import convert
from qdistill.quant.intform import InputGrid, IntConv, IntEmbedding, IntLinear, IntModule
from qdistill.quant.modules import QuantModule

__all__ = ["export_transformer_onnx", "is_transformer"]

OPSET = 18  # per-axis DequantizeLinear with the dynamo exporter's own opset


@torch.library.custom_op("qdistill::dequantize", mutates_args=())
def dequantize(ints: Tensor, scale: Tensor, zero: Tensor, axis: int) -> Tensor:
    """``(ints - zero) * scale`` with one scale per index of ``axis`` (ONNX DequantizeLinear)."""
    shape = [1] * ints.dim()
    shape[axis] = -1
    return (ints.float() - zero.float().reshape(shape)) * scale.reshape(shape)


@dequantize.register_fake
def _(ints: Tensor, scale: Tensor, zero: Tensor, axis: int) -> Tensor:
    return ints.new_empty(ints.shape, dtype=torch.float32)


@torch.library.custom_op("qdistill::quantize_dequantize", mutates_args=())
def quantize_dequantize(
    x: Tensor, in_scale: Tensor, in_zero: Tensor, top: Tensor, scale: Tensor, zero: Tensor, clip: bool
) -> Tensor:
    """ONNX's ``QuantizeLinear -> Clip(0, top) -> DequantizeLinear`` (uint8 levels, round half to even)."""
    k = (torch.round(x / in_scale) + in_zero.float()).clamp(0.0, top.float())
    return (k - zero.float()) * scale


@quantize_dequantize.register_fake
def _(x: Tensor, *_: Any) -> Tensor:
    return torch.empty_like(x)


def _translations() -> dict[Any, Any]:
    """The ONNX translation of the two custom ops (onnxscript is imported only for an export)."""
    from onnxscript import opset18 as op

    def dequantize_onnx(ints, scale, zero, axis: int):
        return op.DequantizeLinear(ints, scale, zero, axis=axis)

    def quantize_dequantize_onnx(x, in_scale, in_zero, top, scale, zero, clip: bool):
        k = op.QuantizeLinear(x, in_scale, in_zero)
        return op.DequantizeLinear(op.Clip(k, None, top) if clip else k, scale, zero)  # Q saturates at 0

    return {
        torch.ops.qdistill.dequantize.default: dequantize_onnx,
        torch.ops.qdistill.quantize_dequantize.default: quantize_dequantize_onnx,
    }


class _QDQActivation(nn.Module):
    """A per-tensor `InputGrid` as the custom Q -> (Clip) -> DQ op, with `act_grid`'s input shift
    (a lower bound off the grid) and half-integer output zero as float adds around it."""

    def __init__(self, grid: InputGrid) -> None:
        super().__init__()
        g = act_grid(grid)
        self.shift, self.half, self.clip = g.shift, g.step / 2 if g.half else None, g.n < 255
        for name, value, dtype in (
            ("in_scale", g.delta, torch.float32),
            ("in_zero", g.q_zero, torch.uint8),
            ("top", g.n, torch.uint8),
            ("scale", g.step, torch.float32),
            ("zero", g.dq_zero, torch.uint8),
        ):
            self.register_buffer(name, torch.tensor(value, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        x = x if self.shift is None else x + self.shift
        y = quantize_dequantize(x, self.in_scale, self.in_zero, self.top, self.scale, self.zero, self.clip)
        return y if self.half is None else y + self.half


def _activation(grid: InputGrid) -> nn.Module:
    """The export form of a layer's input grid: QDQ for a fixed grid; a per-token grid (and a
    float input) stays what it is."""
    return _QDQActivation(grid) if grid.kind == "tensor" else grid


class _QDQLayer(nn.Module):
    """An integer layer (`IntLinear`, `IntConv`, `IntEmbedding`) with its weight as int8 levels
    behind the custom dequantize op, or as the exact float weight where QDQ cannot hold it."""

    def __init__(self, form: IntModule, name: str) -> None:
        super().__init__()
        self.kind = (
            "embedding" if isinstance(form, IntEmbedding) else "linear" if isinstance(form, IntLinear) else "conv"
        )
        grid = getattr(form, "input_grid", None) if self.kind != "embedding" else None
        self.act = nn.Identity() if grid is None else _activation(grid)
        self.register_buffer("bias", form.bias)
        self.conv = F.conv2d if getattr(form, "dims", 2) == 2 else F.conv1d
        self.args = (  # what F.embedding / the conv take besides input, weight and bias
            (form.padding_idx,)
            if self.kind == "embedding"
            else (form.stride, form.padding, form.dilation, form.groups)
            if self.kind == "conv"
            else ()
        )
        self.axis = 1 if self.kind == "linear" else 0  # Linear weights are stored (in, out): DQ feeds the MatMul
        iw = weight_ints(form)
        self.info: dict[str, Any] = {
            "name": name,
            "type": type(form).__name__,
            "weight_bits": form.bits,
            "act": "ids" if grid is None else grid.kind,
            "act_bits": None if grid is None else grid.bits,
        }
        if iw is None or not iw.fits_int8:
            w = form.dequantized_weight()
            self.register_buffer("weight", w.t().contiguous() if self.axis == 1 else w)
            self.ints = None
            self.info["weight"] = "float32 (per-group scales)" if iw is None else "float32 (levels need 9 bits)"
            return
        self.register_buffer("ints", (iw.ints.t().contiguous() if self.axis == 1 else iw.ints).to(torch.int8))
        self.register_buffer("scale", iw.scale.float())
        self.register_buffer("zero", torch.zeros(len(iw.scale), dtype=torch.int8))
        self.info["weight"] = "int8 per-channel"

    def dequantized(self) -> Tensor:
        return self.weight if self.ints is None else dequantize(self.ints, self.scale, self.zero, self.axis)

    def forward(self, x: Tensor) -> Tensor:
        w = self.dequantized()
        if self.kind == "embedding":
            return F.embedding(x, w, *self.args)
        x = self.act(x)
        if self.kind == "conv":
            return self.conv(x, w, self.bias, *self.args)
        y = x @ w
        return y if self.bias is None else y + self.bias


def is_transformer(model: nn.Module, example: Inputs) -> bool:
    """Whether `export_onnx` takes this route: a dict batch, or a Hugging Face model (its config
    has a ``model_type``)."""
    return isinstance(example, Mapping) or hasattr(getattr(model, "config", None), "model_type")


@torch.no_grad()
def export_form(model: nn.Module) -> tuple[nn.Module, list[dict[str, Any]]]:
    """A copy of ``model`` in its integer form with every integer layer and per-tensor grid in
    its QDQ export form; also what each layer became (the report's ``layers``)."""
    form = copy.deepcopy(model).eval()
    if any(isinstance(m, QuantModule) for m in form.modules()):
        convert(form)
    layers: list[dict[str, Any]] = []
    for name, m in list(form.named_modules()):
        if any(name.startswith(layer["name"] + ".") for layer in layers):
            continue  # inside a layer already replaced
        if isinstance(m, (IntLinear, IntConv, IntEmbedding)):
            if isinstance(m, IntEmbedding) and m.max_norm is not None:
                raise ExportError(f"export: {name} renormalises its embeddings (max_norm), which ONNX does not")
            if isinstance(m, IntConv) and m.padding_mode != "zeros":
                raise ExportError(f"export: {name} uses padding mode {m.padding_mode!r}; only zero padding exports")
            qdq = _QDQLayer(m, name)
            layers.append(qdq.info)
            form.set_submodule(name, qdq)
        elif isinstance(m, InputGrid) and m.kind == "tensor":
            form.set_submodule(name, _QDQActivation(m))
    if not layers:
        raise ExportError(f"export: {type(model).__name__} has no quantized layer (run qdistill.quantize first)")
    return form, layers


def _keyword_inputs(model: nn.Module, example: Inputs) -> dict[str, Tensor]:
    """``example`` as keyword inputs: a dict batch as it is, a tensor under the name of the
    model's first forward argument (``pixel_values`` for a ViT)."""
    if isinstance(example, Mapping):
        return {k: v for k, v in example.items() if isinstance(v, Tensor) and k != "labels"}
    return {next(iter(inspect.signature(model.forward).parameters)): example}


def _dynamic_shapes(inputs: dict[str, Tensor]) -> dict[str, dict[int, Any]]:
    """Batch dynamic everywhere; the sequence too for token tensors (integer, batch x tokens)."""
    dim = torch.export.Dim.DYNAMIC
    return {k: {0: dim, 1: dim} if v.dim() == 2 and not v.is_floating_point() else {0: dim} for k, v in inputs.items()}


def to_onnx(form: nn.Module, inputs: dict[str, Tensor], opset: int = OPSET) -> Any:
    """The ONNX ModelProto of ``form`` (`export_form`) with inputs named as ``inputs`` and one
    output, ``logits``."""
    try:
        program = torch.onnx.export(
            form,
            (),
            kwargs=inputs,
            dynamo=True,
            opset_version=opset,
            dynamic_shapes=_dynamic_shapes(inputs),
            custom_translation_table=_translations(),
            output_names=["logits"],
            verbose=False,
        )
    except Exception as e:  # torch.export raises many types for code it cannot capture
        cause = e.__cause__ or e  # torch.onnx wraps torch.export's error in a long banner
        first = (str(cause).strip() or type(cause).__name__).splitlines()[0]
        raise ExportError(f"export: torch.onnx.export failed on {type(form).__name__}: {first[:300]}") from None
    proto = program.model_proto
    del proto.graph.output[1:]  # a ModelOutput's other fields (hidden states, attentions): logits only
    for node in proto.graph.node:  # the exporter's per-node stack traces: most of the file's bytes
        del node.metadata_props[:]
        node.doc_string = ""
    return proto


def metadata_of(model: nn.Module, inputs: dict[str, Tensor]) -> dict[str, Any]:
    """Input names, sequence length (token inputs) or input size (images), and ``id2label``."""
    meta: dict[str, Any] = {"input_names": list(inputs)}
    first = next(iter(inputs.values()))
    if first.is_floating_point():
        meta["input_size"] = list(first.shape[1:])
    else:
        meta["sequence_length"] = int(first.shape[1])
    id2label = getattr(getattr(model, "config", None), "id2label", None)
    if id2label:
        meta["id2label"] = {str(k): v for k, v in id2label.items()}
    return meta


def export_transformer_onnx(
    model: nn.Module,
    example: Inputs,
    path: str | Path,
    *,
    calib: Inputs | None = None,
    labels: Tensor | None = None,
    min_agreement: float = 99.5,
    threads: int = 2,
    card: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    opset: int = OPSET,
    notes: list[str] | None = None,
) -> dict[str, Any]:
    """Export a quantized transformers classifier (fake-quant, or already `convert`-ed) to QDQ
    ONNX at ``path``; `export_onnx` calls this for dict batches and Hugging Face models.

    ``example`` is a dict batch (``input_ids``, ``attention_mask``, ...; batch and sequence stay
    dynamic) or an image tensor (batch dynamic). The parity gate compares the logits of ONNX
    Runtime on ``calib`` (default ``example``) with ``model``'s and refuses (ExportError,
    nothing written) below ``min_agreement`` percent. Writes ``path``, ``path.json`` and
    ``path.md`` like `export_onnx`; the metadata holds `metadata_of` and ``metadata``.
    """
    import onnx

    from qdistill.export.onnx import require_writable, set_metadata

    min_agreement = check_min_agreement(min_agreement)
    path = Path(path)
    require_writable(path.parent)
    model = model.eval()
    inputs = _keyword_inputs(model, example)
    calib = inputs if calib is None else _keyword_inputs(model, calib)
    form, layers = export_form(model)
    proto = to_onnx(form, inputs, opset)
    meta = {**metadata_of(model, inputs), **(metadata or {})}
    set_metadata(proto, meta)
    onnx.checker.check_model(proto)
    blob = proto.SerializeToString()
    session = ort_session(blob, threads)
    exported = onnx_logits(session, calib)
    trained = torch_logits(model, calib)
    parity = compare_logits(trained, exported, decision_tolerance(model, calib, trained))
    parity["threshold"] = min_agreement
    if isinstance(example, Mapping):
        parity["unit"] = "lines"  # the rows of a text batch (what `images` counts here)
    parity.update(label_top1(trained, exported, labels))
    require_parity(parity, min_agreement, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(blob)
    one = feeds_of(session, {k: v[:1] for k, v in calib.items()})
    report = {
        "format": f"onnx (QDQ, opset {opset}, torch.onnx dynamo)",
        "parity": parity,
        "latency": [dict(measure_feeds(session, one, 0.5), threads=threads)],
        "layers": layers,
        "metadata": meta,
        "file_bytes": path.stat().st_size,
        "notes": list(notes or [])
        + (
            ["per-token activation grids are exported as their float min/max/round math"]
            if any(layer["act"] == "token" for layer in layers)
            else []
        ),
        **(card or {}),
    }
    Path(str(path) + ".json").write_text(json.dumps(report, indent=1, default=str))
    write_model_card(path, report)
    return report

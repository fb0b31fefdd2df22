"""Default feature taps for any model, found from module names and one probe forward.

Feature-based methods need to know *where* to read features and *what shape* they have before
training starts (their regressors and embeddings must exist when the optimizer is built). The
rules here work on any ``nn.Module`` built from ``Conv2d``/``Linear`` layers:

* ``last_conv``: the input of the last (quantized, for a student) conv: SQuaT's default tap on a CNN;
  on a transformer SQuaT taps the input of the last block's FFN layer instead (`squat_layer`);
* ``penultimate``: the input of the classifier (the embedding CRD, RKD and CC compare);
* ``stages``: the output of each resolution stage among the top-level children (ResNet's
  ``layer1..3``; the last ReLU at each resolution for a flat model such as ``smallcnn``);
* ``hint``: FitNet's single middle stage; ``last_stage``: the deepest stage.

Shapes come from a forward of a dummy batch (images, or ``input_ids`` for a model with an input
embedding) through a *copy* of the model in eval mode, so BatchNorm statistics and uncalibrated
quantizers of the real model are never touched.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from functools import partial

import torch
from torch import nn

from qdistill.batch import Inputs, call_model
from qdistill.distill.taps import FeatureTaps
from qdistill.errors import ConfigError
from qdistill.quant.api import full_precision_layers
from qdistill.quant.modules import QuantModule

__all__ = [
    "TAP_KINDS",
    "default_taps",
    "input_shape",
    "last_conv",
    "last_quantized_conv",
    "probe_shapes",
    "squat_layer",
]

TAP_KINDS = ("last_conv", "penultimate", "stages", "hint", "last_stage")
# SQuaT's layer in a transformer block, by module-name suffix: BERT-style encoders tap the input of
# the FFN's first layer (``intermediate.dense``, as SQuaT's BERT code), Llama-style decoders the
# input of the MLP's output projection (``mlp.down_proj``).
FFN_LAYERS = ("intermediate.dense", "mlp.down_proj")


def last_conv(model: nn.Module) -> str:
    """Name of the last ``Conv2d`` in registration order."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not names:
        raise ConfigError(f"{type(model).__name__} has no Conv2d to take a feature from; pass the taps explicitly")
    return names[-1]


def last_quantized_conv(model: nn.Module) -> str:
    """Name of the last conv whose input is quantized (SQuaT's default student tap)."""
    names = [
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and isinstance(m, QuantModule) and m.act_quant is not None
    ]
    if not names:
        raise ConfigError("the student has no conv with an activation quantizer: quantize it with act_bits set")
    return names[-1]


def _last_block(model: nn.Module) -> str | None:
    """Name of the last block of the model's longest stack of same-type blocks (a transformer's layers:
    ``model.layers``, ``transformer.h``, ``encoder.layer``, timm's ``blocks``), or None."""
    best, size = None, 0
    for name, m in model.named_modules():
        if isinstance(m, (nn.ModuleList, nn.Sequential)) and len(m) > size and len({type(c) for c in m}) == 1:
            best, size = f"{name}.{len(m) - 1}" if name else str(len(m) - 1), len(m)
    return best


def _ffn_layer(model: nn.Module, layers: list[tuple[str, QuantModule]]) -> str | None:
    """SQuaT's FFN layer among ``layers`` in the last block, found by shape, for families without
    `FFN_LAYERS` names: a decoder (a model that generates) taps its MLP's output projection (the last
    layer of the block that narrows its input: OPT's ``fc2``, GPT-NeoX's ``dense_4h_to_h``), an encoder
    the FFN's first layer (the last that widens: DistilBERT's ``lin1``, timm ViT's ``mlp.fc1``)."""
    block = _last_block(model)
    if block is None:
        return None
    shapes = [(n, m.oriented_weight().shape) for n, m in layers if m.features_last and n.startswith(f"{block}.")]
    can_generate = getattr(model, "can_generate", None)
    if callable(can_generate) and can_generate():
        picked = [n for n, (out, inp) in shapes if inp > out]
    else:
        picked = [n for n, (out, inp) in shapes if out > inp]
    return picked[-1] if picked else None


def squat_layer(model: nn.Module) -> str:
    """SQuaT's default layer: the last quantized FFN layer of a transformer (`FFN_LAYERS` by name, else
    `_ffn_layer` by shape), else the last quantized conv."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, QuantModule) and m.act_quant is not None]
    by_name = [n for n, _ in layers if n.endswith(FFN_LAYERS)]
    ffn = by_name[-1] if by_name else _ffn_layer(model, layers)
    if ffn is not None:
        return ffn
    try:
        return last_quantized_conv(model)
    except ConfigError:
        if not any(isinstance(m, QuantModule) and m.features_last for m in model.modules()):
            raise
        raise ConfigError(
            "squat found no transformer FFN layer with an activation quantizer in the student: quantize "
            "it with act_bits set, or name the layer with method.params.student_tap and quantizer"
        ) from None


def input_shape(model: nn.Module) -> tuple[int, int, int, int]:
    """A dummy batch shape: channels of the first conv, ``model.input_size`` (default 32) square."""
    first = full_precision_layers(model)[0]
    channels = model.get_submodule(first).in_channels if first else 3
    size = int(getattr(model, "input_size", 32))
    return (2, channels, size, size)


def dummy_input(model: nn.Module) -> Inputs:
    """A batch the model accepts: ``input_ids`` (2 x 8 zeros) when it has an input embedding, else images
    in the dtype of the model's weights (a bf16 or float64 model refuses float32 images)."""
    device = next(model.parameters()).device
    get_embeddings = getattr(model, "get_input_embeddings", None)
    if callable(get_embeddings) and isinstance(get_embeddings(), nn.Embedding):
        return {"input_ids": torch.zeros(2, 8, dtype=torch.long, device=device)}
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return torch.zeros(input_shape(model), dtype=dtype, device=device)


@torch.no_grad()
def probe_shapes(model: nn.Module, taps: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """Shape (batch dim included) of each tap on a dummy batch, from a copy in eval mode."""
    probe = copy.deepcopy(model).eval()
    hooks = FeatureTaps(probe, taps)
    try:
        call_model(probe, dummy_input(model))
        return {k: tuple(v.shape) for k, v in hooks.pop().items()}
    finally:
        hooks.close()


def _record(order: list[tuple[str, tuple[int, ...]]], name: str, module: nn.Module, args: tuple, output) -> None:
    if isinstance(output, torch.Tensor):
        order.append((name, tuple(output.shape)))


def _has_conv(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in module.modules())


def _candidates(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Top-level children; descend while a single child holds every conv (e.g. ``features``)."""
    prefix, node = "", model
    while True:
        children = [(f"{prefix}{n}", m) for n, m in node.named_children()]
        with_conv = [c for c in children if _has_conv(c[1])]
        if len(with_conv) != 1 or not list(with_conv[0][1].children()):
            return children
        prefix, node = f"{with_conv[0][0]}.", with_conv[0][1]


@torch.no_grad()
def _stage_outputs(model: nn.Module) -> list[str]:
    """Last candidate output at each spatial resolution, up to the end of the conv trunk."""
    probe = copy.deepcopy(model).eval()
    order: list[tuple[str, tuple[int, ...]]] = []
    candidates = _candidates(probe)
    conv_names = {n for n, m in candidates if _has_conv(m)}
    handles = [m.register_forward_hook(partial(_record, order, n)) for n, m in candidates]
    try:
        probe(torch.zeros(input_shape(model), device=next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
    last_trunk = max(i for i, (n, _) in enumerate(order) if n in conv_names)
    trunk = list(order[: last_trunk + 1])
    for name, shape in order[last_trunk + 1 :]:  # BN / ReLU after the last conv keep the shape
        if shape != trunk[-1][1]:
            break
        trunk.append((name, shape))
    stages: dict[tuple[int, ...], str] = {}
    for name, shape in trunk:
        if len(shape) == 4:
            stages.pop(shape[2:], None)  # re-insert so dict order follows the last occurrence
            stages[shape[2:]] = name
    return list(stages.values())


def default_taps(model: nn.Module, kind: str) -> list[str]:
    """Tap names of one `TAP_KINDS` rule for ``model``."""
    if kind == "last_conv":
        return [f"{last_conv(model)}:input"]
    if kind == "penultimate":
        classifier = full_precision_layers(model)[1]
        if classifier is None:
            raise ConfigError(f"{type(model).__name__} has no Linear classifier; pass the taps explicitly")
        return [f"{classifier}:input"]
    if kind not in TAP_KINDS:
        raise ConfigError(f"unknown tap rule {kind!r}; choose one of {', '.join(TAP_KINDS)}")
    stages = _stage_outputs(model)
    if kind == "hint":
        return [stages[(len(stages) - 1) // 2]]
    if kind == "last_stage":
        return [stages[-1]]
    return stages

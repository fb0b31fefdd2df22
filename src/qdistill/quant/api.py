"""`quantize(model, config)`: swap layers for quantized ones in place, then train as usual."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import Tensor, nn

from qdistill.quant.base import Quantizer
from qdistill.quant.config import QuantConfig
from qdistill.quant.modules import QConv2d, QLinear, QuantModule

__all__ = [
    "QUANT_MODULE_MAP",
    "calibrate",
    "full_precision_layers",
    "named_quantizers",
    "quantize",
    "reestimate_batchnorm",
    "register_quant_module",
]

QUANT_MODULE_MAP: dict[type[nn.Module], type[nn.Module]] = {nn.Conv2d: QConv2d, nn.Linear: QLinear}


def register_quant_module(float_cls: type[nn.Module], quant_cls: type[nn.Module]) -> None:
    """Teach `quantize` a new layer type; ``quant_cls.from_float(module, cfg)`` builds the swap."""
    if not hasattr(quant_cls, "from_float"):
        raise TypeError(f"{quant_cls.__name__} needs a from_float(module, cfg) classmethod")
    QUANT_MODULE_MAP[float_cls] = quant_cls


def full_precision_layers(model: nn.Module) -> tuple[str | None, str | None]:
    """Names of the first conv and the classifier.

    Registry models declare them (``first_conv``/``classifier`` attributes, as timm does); for
    any other module the first Conv2d and the last Linear in registration order are used.
    """
    first = getattr(model, "first_conv", None)
    last = getattr(model, "classifier", None)
    if first is None or last is None:
        names = [(n, m) for n, m in model.named_modules() if n]
        convs = [n for n, m in names if isinstance(m, nn.Conv2d)]
        linears = [n for n, m in names if isinstance(m, nn.Linear)]
        first = first if first is not None else (convs[0] if convs else None)
        last = last if last is not None else (linears[-1] if linears else None)
    return first, last


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def quantize(
    model: nn.Module,
    config: QuantConfig,
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
    calib_data: Tensor | None = None,
) -> nn.Module:
    """Replace every eligible layer of ``model`` by its quantized twin, in place, and return it.

    Works on any nn.Module (no tracing): it walks ``named_modules`` and swaps the types in
    `QUANT_MODULE_MAP`. The first conv and the classifier stay full precision unless the config
    says otherwise. ``filter_fn(module, name)`` can veto a layer. With ``calib_data`` the
    activation ranges are set from that batch (`calibrate`); otherwise on the first forward.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.LazyLinear(2))
        >>> _ = quantize(net, QuantConfig(method="lsq", weight_bits=4, act_bits=4))
        >>> [type(m).__name__ for m in net]
        ['Conv2d', 'ReLU', 'QConv2d', 'Flatten', 'LazyLinear']
    """
    first, last = full_precision_layers(model)
    kept = {n for n, keep in ((first, config.keep_first), (last, config.keep_last)) if keep and n}
    for name, module in list(model.named_modules()):
        quant_cls = QUANT_MODULE_MAP.get(type(module))
        if quant_cls is None or not name:
            continue
        if (name in kept and not _matches(name, config.include)) or _matches(name, config.exclude):
            continue
        if filter_fn is not None and not filter_fn(module, name):
            continue
        model.set_submodule(name, quant_cls.from_float(module, config.for_layer(name)))
    if config.residual_bits is not None:
        _quantize_residuals(model, config.residual_bits)
    model.qdistill_config = config
    if calib_data is not None:
        calibrate(model, calib_data)
    return model


def _quantize_residuals(model: nn.Module, bits: int) -> None:
    """Put an LSQ activation quantizer in every residual slot a block declares.

    A layer reading the block input (``quant_in``) with an input quantizer of the same width
    shares it: its input is then already on that grid, so one rounding instead of two and no
    requantization in an integer runtime.
    """
    from qdistill.quant.lsq import LSQQuantizer

    blocks = [m for m in model.modules() if getattr(m, "residual_quant_slots", ())]
    if not blocks:
        raise ValueError(f"quant.residual_bits: {type(model).__name__} has no blocks with residual_quant_slots")
    for block in blocks:
        for slot in block.residual_quant_slots:
            setattr(block, slot, LSQQuantizer(bits, is_weight=False))
        readers = block.input_readers() if hasattr(block, "input_readers") else ()
        for reader in readers:
            if isinstance(reader, QuantModule) and reader.act_quant is not None and reader.act_quant.bits == bits:
                reader.act_quant = block.quant_in


def named_quantizers(model: nn.Module) -> Iterator[tuple[str, Quantizer]]:
    for name, module in model.named_modules():
        if isinstance(module, Quantizer):
            yield name, module


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, batch: Tensor) -> None:
    """Recompute every BatchNorm's running statistics on ``batch`` for the quantized weights,
    with activations left full precision (activation quantizers are bypassed)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    acts = {m: m.act_quant for m in model.modules() if isinstance(m, QuantModule)}
    momenta = {bn: bn.momentum for bn in bns}
    was_training = model.training
    try:
        for m in acts:
            m.act_quant = None
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over this batch
        model.train()
        model(batch)
    finally:
        for m, q in acts.items():
            m.act_quant = q
        for bn, momentum in momenta.items():
            bn.momentum = momentum
        model.train(was_training)


@torch.no_grad()
def calibrate(model: nn.Module, batch: Tensor) -> None:
    """Re-initialise every quantizer's range from ``batch`` (activations) and current weights.

    Runs in eval mode so BatchNorm running statistics are untouched, except when a weight
    quantizer drops the weights' scale (DoReFa and PACT above 1 bit map weights to [-1, 1]):
    the teacher's statistics then describe outputs 10-50x smaller than the student's, every
    activation range would be calibrated on wrong inputs (a PACT clip, which learns only from
    clipped inputs, then never comes down), so the statistics are first re-estimated on ``batch``.
    """
    if any(q.is_weight and not q.keeps_scale for _, q in named_quantizers(model)):
        reestimate_batchnorm(model, batch)
    was_training = model.training
    for _, q in named_quantizers(model):
        q.reset()
    model.eval()
    try:
        model(batch)
    finally:
        model.train(was_training)

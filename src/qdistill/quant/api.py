"""`quantize(model, config)`: swap layers for quantized ones in place, then train as usual."""

from __future__ import annotations

import fnmatch
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from qdistill.batch import call_model, split_batch
from qdistill.errors import ConfigError
from qdistill.quant.base import Quantizer
from qdistill.quant.config import QuantConfig
from qdistill.quant.modules import QConv1d, QConv2d, QEmbedding, QLinear, QuantModule

__all__ = [
    "QUANT_MODULE_MAP",
    "CalibData",
    "QuantSummary",
    "calibrate",
    "full_precision_layers",
    "named_quantizers",
    "quant_class",
    "quantize",
    "reestimate_batchnorm",
    "register_quant_module",
]

# float type -> quantized twin; matched with isinstance (subclasses too), the most specific entry wins
QUANT_MODULE_MAP: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv1d: QConv1d,
    nn.Conv2d: QConv2d,
    nn.Linear: QLinear,
    nn.Embedding: QEmbedding,
}

# a batch (tensor, dict, (inputs, labels)) or a forward_loop(model) that runs the model itself
CalibData = Any


def register_quant_module(float_cls: type[nn.Module], quant_cls: type[nn.Module]) -> None:
    """Teach `quantize` a new layer type (and its subclasses); ``quant_cls.from_float(module, cfg)`` builds the swap."""
    if not hasattr(quant_cls, "from_float"):
        raise TypeError(f"{quant_cls.__name__} needs a from_float(module, cfg) classmethod")
    QUANT_MODULE_MAP[float_cls] = quant_cls


def _register_transformers() -> None:
    """Add transformers' Conv1D once transformers is loaded (a model holding one implies it is)."""
    utils = sys.modules.get("transformers.pytorch_utils")
    if utils is not None and getattr(utils, "Conv1D", None) is not None and utils.Conv1D not in QUANT_MODULE_MAP:
        from qdistill.quant.hf import QHFConv1D

        QUANT_MODULE_MAP[utils.Conv1D] = QHFConv1D


def quant_class(module: nn.Module) -> type[nn.Module] | None:
    """The quantized twin of ``module``'s type family (None: not quantizable, or already quantized)."""
    if isinstance(module, QuantModule):
        return None
    return next((QUANT_MODULE_MAP[c] for c in type(module).__mro__ if c in QUANT_MODULE_MAP), None)


def _run(model: nn.Module, data: CalibData) -> None:
    """One calibration pass: ``data(model)`` for a forward loop, else the model on the batch's inputs."""
    if callable(data) and not isinstance(data, nn.Module):
        data(model)
    else:
        call_model(model, split_batch(data)[0])


def _resolve(model: nn.Module, hint: Any) -> list[nn.Module]:
    """Modules a hint names: a module, a submodule name, or a list of names (timm's distilled heads)."""
    if isinstance(hint, nn.Module):
        return [hint]
    if isinstance(hint, str):
        try:
            return [model.get_submodule(hint)]
        except AttributeError:
            return []
    if isinstance(hint, (list, tuple)):
        return [m for h in hint for m in _resolve(model, h)]
    return []


def _call_hint(model: nn.Module, getter: str) -> nn.Module | None:
    fn = getattr(model, getter, None)
    if not callable(fn):
        return None
    try:
        return fn()
    except (NotImplementedError, AttributeError):
        return None


def _hinted(model: nn.Module, side: str) -> list[nn.Module]:
    """The model's own input layer (``side="first"``) or output head (``"last"``), when it names them.

    Registry models and timm name them (``first_conv`` / ``classifier`` attributes,
    ``pretrained_cfg``); transformers models return them (``get_input_embeddings()``,
    ``get_output_embeddings()``) or hold them (``classifier``, ``lm_head``).
    """
    key = "first_conv" if side == "first" else "classifier"
    cfg = getattr(model, "pretrained_cfg", None)
    hints = [getattr(model, key, None), cfg.get(key) if isinstance(cfg, Mapping) else None]
    if side == "first":
        hints.append(_call_hint(model, "get_input_embeddings"))
    else:
        hints += [_call_hint(model, "get_output_embeddings"), getattr(model, "lm_head", None)]
    found = [m for h in hints for m in _resolve(model, h)]
    return list({id(m): m for m in found}.values())


@torch.no_grad()
def _execution_order(model: nn.Module, data: CalibData, eligible: Callable[[nn.Module], bool]) -> list[nn.Module]:
    """Eligible modules in the order the calibration pass calls them."""
    order: dict[int, nn.Module] = {}

    def seen(mod: nn.Module, args: tuple) -> None:  # a pre-hook returning a value would replace the inputs
        order.setdefault(id(mod), mod)

    hooks = [m.register_forward_pre_hook(seen) for m in model.modules() if eligible(m)]
    was_training = model.training
    model.eval()
    try:
        _run(model, data)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return list(order.values())


def _ends(
    model: nn.Module, config: QuantConfig, calib_data: CalibData | None
) -> tuple[list[nn.Module], list[nn.Module]]:
    """The quantizable modules of the input layer and of the output head (by identity).

    The model's hints when it has them (a hinted input Embedding that is not quantized leaves
    nothing to keep); otherwise the first and the last quantizable module in execution order on
    ``calib_data``, or in registration order without it.
    """

    def eligible(m: nn.Module) -> bool:  # quantized layers count too: the ends of a student are its teacher's
        quantizable = quant_class(m) is not None or isinstance(m, QuantModule)
        return quantizable and (config.quantize_embeddings or not isinstance(m, nn.Embedding))

    def inside(mods: list[nn.Module]) -> list[nn.Module]:
        return [m for top in mods for m in top.modules() if eligible(m)]

    hint_first, hint_last = _hinted(model, "first"), _hinted(model, "last")
    first, last = inside(hint_first), inside(hint_last)  # a hinted float Embedding: nothing to keep
    if not hint_first or not hint_last:
        order = _execution_order(model, calib_data, eligible) if calib_data is not None else None
        order = order or [m for m in model.modules() if eligible(m)]
        first = first if hint_first else order[:1]
        last = last if hint_last else order[-1:]
    return first, last


def full_precision_layers(model: nn.Module) -> tuple[str | None, str | None]:
    """Names of the input layer and the output head that ``keep_first``/``keep_last`` keep float.

    The model's own hints (``first_conv``/``classifier`` attributes as registry models and timm
    declare them, transformers' input/output embeddings, ``classifier``, ``lm_head``); otherwise the
    first and last quantizable module in registration order.
    """
    _register_transformers()
    first, last = _ends(model, QuantConfig(), None)
    names = {id(m): n for n, m in model.named_modules()}
    return (names[id(first[0])] if first else None), (names[id(last[-1])] if last else None)


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


@dataclass
class QuantSummary:
    """What `quantize` did: each swapped layer with its bits, each layer kept float and why."""

    quantized: list[tuple[str, str, str]] = field(default_factory=list)  # (name, float type, "W4A4 ...")
    kept: list[tuple[str, str, str]] = field(default_factory=list)  # (name, type, why)

    def __str__(self) -> str:
        lines = [f"quantized {len(self.quantized)} layers, kept {len(self.kept)} in float"]
        counts = Counter((kind, bits) for _, kind, bits in self.quantized)
        lines += [f"  {n:>4} x {kind} {bits}" for (kind, bits), n in counts.items()]
        lines += [f"  float  {name} ({kind}): {why}" for name, kind, why in self.kept]
        return "\n".join(lines)


def _bits(cfg: QuantConfig) -> str:
    text = f"W{cfg.weight_bits}A{cfg.act_bits if cfg.act_bits is not None else 'fp'}"
    if cfg.group_size:
        text += f" group {cfg.group_size}"
    elif cfg.per_channel:
        text += " per channel"
    return text + (" per token" if cfg.act_granularity == "token" and cfg.act_bits is not None else "")


def _tied_groups(model: nn.Module) -> list[list[str]]:
    """Names of the modules that share one weight Parameter (tied embeddings), one list per Parameter."""
    holders: dict[int, list[str]] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        w = m._parameters.get("weight") if name else None
        if isinstance(w, nn.Parameter):
            holders.setdefault(id(w), []).append(name)
    return [names for names in holders.values() if len(names) > 1]


def _why_float(
    name: str,
    module: nn.Module,
    config: QuantConfig,
    ends: dict[int, str],
    filter_fn: Callable[[nn.Module, str], bool] | None,
) -> str | None:
    """Why a quantizable layer stays float, or None to swap it."""
    if isinstance(module, nn.Embedding) and not config.quantize_embeddings:
        return "embedding (quant.quantize_embeddings is off)"
    if isinstance(module, nn.modules.lazy.LazyModuleMixin) and module.has_uninitialized_params():
        return "lazy layer not initialised (run one forward first)"
    if _matches(name, config.exclude):
        return "quant.exclude"
    if id(module) in ends and not _matches(name, config.include):
        return ends[id(module)]
    if filter_fn is not None and not filter_fn(module, name):
        return "filter_fn"
    return None


def _plan(model: nn.Module, config: QuantConfig, filter_fn, calib_data) -> dict[str, tuple[nn.Module, str | None]]:
    """Every quantizable layer by name, with why it stays float (None: it is swapped)."""
    ends: dict[int, str] = {}
    if config.keep_first or config.keep_last:
        first, last = _ends(model, config, calib_data)
        ends.update({id(m): "output head (quant.keep_last)" for m in last if config.keep_last})
        ends.update({id(m): "input layer (quant.keep_first)" for m in first if config.keep_first})
    plan: dict[str, tuple[nn.Module, str | None]] = {}
    for name, module in model.named_modules(remove_duplicate=False):  # a shared module under each of its names
        if not name or quant_class(module) is None:
            continue
        parts = name.split(".")
        if any(plan.get(".".join(parts[:i]), (None, "-"))[1] is None for i in range(1, len(parts))):
            continue  # inside a layer that is swapped whole
        plan[name] = (module, _why_float(name, module, config, ends, filter_fn))
    for names in _tied_groups(model):  # tied weights: both sides quantized, or neither
        floats = [n for n in names if n not in plan or plan[n][1] is not None]
        for n in names:
            if floats and n in plan and plan[n][1] is None:
                plan[n] = (plan[n][0], f"weight tied to {floats[0]}, which stays float")
    return plan


def quantize(
    model: nn.Module,
    config: QuantConfig,
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
    calib_data: CalibData | None = None,
) -> nn.Module:
    """Replace every eligible layer of ``model`` by its quantized twin, in place, and return it.

    Works on any nn.Module (no tracing): layers are matched by type family (`QUANT_MODULE_MAP`,
    subclasses included; transformers' Conv1D once transformers is loaded). The input layer and
    the output head stay full precision unless the config says otherwise (`full_precision_layers`;
    without hints in the model, execution order on ``calib_data``); tied weights are quantized on
    both sides or on neither. ``filter_fn(module, name)`` can veto a layer. With ``calib_data`` (a
    batch, or a ``forward_loop(model)``) the ranges are set by `calibrate`; otherwise on the first
    forward. ``model.qdistill_summary`` (a `QuantSummary`) says what was swapped and kept.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.LazyLinear(2))
        >>> _ = quantize(net, QuantConfig(method="lsq", weight_bits=4, act_bits=4))
        >>> [type(m).__name__ for m in net]
        ['Conv2d', 'ReLU', 'QConv2d', 'Flatten', 'LazyLinear']
    """
    _register_transformers()
    plan = _plan(model, config, filter_fn, calib_data)
    summary = QuantSummary()
    twins: dict[int, nn.Module] = {}
    for name, (module, why) in plan.items():
        if why is not None:
            summary.kept.append((name, type(module).__name__, why))
            continue
        layer_cfg = config.for_layer(name)
        if id(module) not in twins:
            try:
                twins[id(module)] = quant_class(module).from_float(module, layer_cfg)
            except ConfigError as e:
                raise ConfigError(f"layer {name!r} ({type(module).__name__}): {e}") from None
        model.set_submodule(name, twins[id(module)])
        summary.quantized.append((name, type(module).__name__, _bits(layer_cfg)))
    if not summary.quantized:
        raise ConfigError(_nothing_quantized(model, summary))
    if config.residual_bits is not None:
        _quantize_residuals(model, config.residual_bits)
    model.qdistill_config = config
    model.qdistill_summary = summary
    if calib_data is not None:
        calibrate(model, calib_data)
    return model


def _nothing_quantized(model: nn.Module, summary: QuantSummary) -> str:
    kind = type(model).__name__
    if summary.kept:
        why = Counter(w for _, _, w in summary.kept)
        return f"quantize: no layer of {kind} was quantized; kept float: " + "; ".join(
            f"{n} x {w}" for w, n in why.items()
        )
    if any(isinstance(m, QuantModule) for m in model.modules()):
        return f"quantize: {kind} is already quantized"
    types = ", ".join(c.__name__ for c in QUANT_MODULE_MAP)
    return f"quantize: {kind} has no layer of a quantizable type ({types}); add one with register_quant_module"


def _quantize_residuals(model: nn.Module, bits: int) -> None:
    """Put an LSQ activation quantizer in every residual slot a block declares.

    A layer reading the block input (``quant_in``) with an input quantizer of the same width
    shares it: its input is then already on that grid, so one rounding instead of two and no
    requantization in an integer runtime.
    """
    from qdistill.quant.lsq import LSQQuantizer

    blocks = [m for m in model.modules() if getattr(m, "residual_quant_slots", ())]
    if not blocks:
        raise ConfigError(f"quant.residual_bits: {type(model).__name__} has no blocks with residual_quant_slots")
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
def reestimate_batchnorm(model: nn.Module, batch: CalibData) -> None:
    """Recompute every BatchNorm's running statistics on ``batch`` (or a forward loop) for the
    quantized weights, with activations left full precision (activation quantizers are bypassed)."""
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
        _run(model, batch)
    finally:
        for m, q in acts.items():
            m.act_quant = q
        for bn, momentum in momenta.items():
            bn.momentum = momentum
        model.train(was_training)


@torch.no_grad()
def calibrate(model: nn.Module, data: CalibData) -> None:
    """Re-initialise every quantizer's range from ``data`` (activations) and current weights.

    ``data`` is a batch (a tensor, a dict such as ``{"input_ids": ..., "attention_mask": ...}``, or
    ``(inputs, labels)``) or a ``forward_loop(model)`` callable that runs the model on as many
    batches as it likes (ModelOpt's convention); quantizers initialise on the first input they see.
    Runs in eval mode so BatchNorm running statistics are untouched, except when a weight
    quantizer drops the weights' scale (DoReFa and PACT above 1 bit map weights to [-1, 1]):
    the teacher's statistics then describe outputs 10-50x smaller than the student's, every
    activation range would be calibrated on wrong inputs (a PACT clip, which learns only from
    clipped inputs, then never comes down), so the statistics are first re-estimated on ``data``.
    """
    if any(q.is_weight and not q.keeps_scale for _, q in named_quantizers(model)):
        reestimate_batchnorm(model, data)
    was_training = model.training
    for _, q in named_quantizers(model):
        q.reset()
    model.eval()
    try:
        _run(model, data)
    finally:
        model.train(was_training)

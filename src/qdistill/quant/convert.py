"""`convert(model)`: replace each fake-quant layer by its integer form, in place."""

from __future__ import annotations

import torch
from torch import nn

from qdistill.errors import ConfigError
from qdistill.quant.base import Quantizer
from qdistill.quant.intform import InputGrid
from qdistill.quant.modules import QuantModule

__all__ = ["convert"]


@torch.no_grad()
def convert(model: nn.Module) -> nn.Module:
    """Replace, in place, each quantized layer by its ``to_int()`` integer module and each
    quantizer of its own (a residual sum's) by its fixed `InputGrid`; return ``model`` in eval mode.

    The converted model computes the fake-quant model's outputs bit for bit, stores integer
    weight levels instead of float weights and has nothing left to train or calibrate. A layer
    shared under several names stays one module. Quantizers must be calibrated first.

    Example:
        >>> from qdistill.quant import QuantConfig, quantize
        >>> net = quantize(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.Linear(4, 2)),
        ...                QuantConfig(method="lsq", weight_bits=4, act_bits=4), calib_data=torch.randn(8, 4))
        >>> type(convert(net)[2]).__name__, net[2].weight_levels.dtype
        ('IntLinear', torch.int8)
    """
    done: dict[int, nn.Module] = {}
    replaced: list[str] = []
    for name, m in list(model.named_modules(remove_duplicate=False)):
        if not name or any(name.startswith(p + ".") for p in replaced):
            continue  # the model itself, or inside a layer already converted
        if id(m) in done:
            twin = done[id(m)]
        elif isinstance(m, QuantModule):
            if not hasattr(m, "to_int"):
                raise ConfigError(
                    f"convert: {name} ({type(m).__name__}) has no to_int(): its layer type does not implement the integer form"
                )
            try:
                twin = m.to_int()
            except ConfigError as e:
                raise ConfigError(f"convert: layer {name!r} ({type(m).__name__}): {e}") from None
        elif isinstance(m, Quantizer):
            twin = InputGrid.of(m)
        else:
            continue
        done[id(m)] = twin
        model.set_submodule(name, twin)
        replaced.append(name)
    if not replaced:
        raise ConfigError(f"convert: {type(model).__name__} has no quantized layer (run qdistill.quantize first)")
    return model.eval()

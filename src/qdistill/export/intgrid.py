"""ONNX's view of the integer form (`qdistill.quant.intform`): int8 weights, Q/DQ parameters.

The levels come from the layer's ``to_int()`` and the activation grids from `InputGrid`; this
module only rewrites them as an integer runtime wants them. A weight is
``(levels - zero_point) * scale``; an integer runtime needs ``q * scale`` with ``q`` an integer:

* integer zero point (LSQ, the int8 form): ``q = levels - zero_point``, ``scale``;
* half-integer zero point (symmetric grids without 0, e.g. 2-bit DoReFa/EWGS weights
  ``{-1, -1/3, 1/3, 1} * s``): ``q = 2 levels - 2 zero_point``, ``scale / 2``, odd integers that
  fit int8 for b <= 7.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from qdistill.errors import ConfigError, ExportError
from qdistill.quant.base import Quantizer
from qdistill.quant.intform import InputGrid, IntModule

__all__ = ["ActGrid", "IntWeight", "act_grid", "weight_ints"]


@dataclass
class IntWeight:
    """A weight as integers and one scale per output channel: ``w = ints * scale[c]``."""

    ints: Tensor  # int64 values, the weight's shape (output channel first)
    scale: Tensor  # float32, one per output channel
    fits_int8: bool


@torch.no_grad()
def weight_ints(layer: IntModule) -> IntWeight | None:
    """Integer weight and per-channel scales of an integer layer; None for per-group scales
    (QDQ has one scale per output channel)."""
    out = layer.weight_shape[0]
    if layer.weight_scale.numel() not in (1, out):
        return None
    k, zero = layer.weight_levels.long(), layer.weight_zero_point
    if torch.equal(zero, zero.round()):
        ints, scale = k - zero.long(), layer.weight_scale
    else:
        ints, scale = 2 * k - (2 * zero).long(), layer.weight_scale / 2
    ints = ints.reshape(layer.weight_shape)
    scale = scale.float().reshape(-1).expand(out).clone()
    return IntWeight(ints, scale, bool(ints.abs().max() <= 127))


@dataclass
class ActGrid:
    """How an activation quantizer maps onto QuantizeLinear / integer Clip / DequantizeLinear.

    The quantizer's level is ``k = clip(round((x - lo) / delta), 0, n)`` and its output
    ``(k - zero) * step``. ``shift`` (when not None) is added to ``x`` before quantizing so that
    ``q_zero`` is an integer; ``half`` marks a half-integer ``zero`` (output then needs
    ``+ step / 2`` after a dequantize with zero point ``zero + 1/2``).
    """

    delta: float  # quantization step on the input side: (hi - lo) / n
    q_zero: int  # QuantizeLinear zero point: the level of x = 0 after the shift
    shift: float | None  # added to x before QuantizeLinear
    n: int  # highest level
    step: float  # output step
    zero: float  # output zero level (integer or half-integer)

    @property
    def half(self) -> bool:
        return self.zero != int(self.zero)

    @property
    def dq_zero(self) -> int:
        """Integer zero point of the DequantizeLinear (``zero + 1/2`` for half-integer grids)."""
        return math.ceil(self.zero)


@torch.no_grad()
def act_grid(q: Quantizer | InputGrid) -> ActGrid:
    """The QuantizeLinear / Clip / DequantizeLinear description of activation quantizer ``q``
    (or of its `InputGrid`, in a converted model)."""
    try:
        g = q if isinstance(q, InputGrid) else InputGrid.of(q)
    except ConfigError as e:
        raise ExportError(f"export: {e}") from None
    if g.kind != "tensor":
        raise ExportError(f"export: {g.kind} activation grids ({type(q).__name__}) cannot be exported to QDQ ONNX")
    lo, hi = float(g.lo), float(g.hi)
    delta = (hi - lo) / g.n
    m = -lo / delta
    # Only a zero point that is exact up to float32 rounding: a learned lower bound a hair off
    # the grid (EWGS, lo = -7e-5) moves every rounding boundary and must be shifted explicitly.
    if abs(m - round(m)) <= 1e-6 * max(1.0, abs(m)) and 0 <= round(m) <= 255:
        shift, q_zero = None, round(m)
    else:
        shift, q_zero = -lo, 0
    return ActGrid(delta, q_zero, shift, g.n, float(g.step), float(g.zero))

"""Exact integer form of every quantizer: the levels a trained model really uses.

Each quantizer outputs ``(k - zero) * step`` for an integer level ``k`` in ``0..2^b - 1``
(`qdistill.quant.fake_quant`). An integer runtime needs ``q * scale`` with ``q`` an integer, so:

* integer ``zero`` (LSQ, unsigned activations): ``q = k - zero``, ``scale = step``;
* half-integer ``zero`` (symmetric grids without 0, e.g. 2-bit DoReFa/EWGS weights
  ``{-1, -1/3, 1/3, 1} * s``): ``q = 2k - 2 zero``, ``scale = step / 2``, odd integers that
  fit int8 for b <= 7.

The levels are recomputed with the very same float operations as the fake-quant forward and
checked against it, so an export never rounds a weight a second time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from qdistill.errors import ExportError
from qdistill.quant.base import Quantizer

__all__ = ["ActGrid", "IntWeight", "act_grid", "quant_levels", "weight_ints"]


@torch.no_grad()
def quant_levels(q: Quantizer, x: Tensor) -> tuple[Tensor, Tensor, float]:
    """``(k, step, zero)`` of quantizer ``q`` on ``x``, computed as its forward does.

    ``k`` holds the integer levels as float; ``(k - zero) * step`` equals ``q(x)`` bit for bit.
    """
    iv = q.interval(x)
    n = q.levels - 1
    k = (iv.x - iv.lo).mul_(1.0 / (iv.hi - iv.lo)).clamp_(0.0, 1.0).mul_(n).round_()
    if not torch.equal((k - iv.zero) * iv.step, q(x)):
        raise RuntimeError(f"{type(q).__name__}: recomputed levels differ from its forward output")
    return k, iv.step.detach(), float(iv.zero)


@dataclass
class IntWeight:
    """A weight as integers and one scale per output channel: ``w = ints * scale[c]``."""

    ints: Tensor  # int64 values, same shape as the weight
    scale: Tensor  # float32, one per output channel
    fits_int8: bool


@torch.no_grad()
def weight_ints(q: Quantizer, w: Tensor) -> IntWeight:
    """Integer levels and per-channel scales of the quantized weight ``q(w)``."""
    k, step, zero = quant_levels(q, w)
    if zero == int(zero):
        ints, scale = k - zero, step
    else:
        ints, scale = 2 * k - int(2 * zero), step / 2
    scale = scale.float().reshape(-1).expand(w.shape[0]).clone() if scale.numel() == 1 else scale.float().reshape(-1)
    ints = ints.round().long()
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
        return int(math.ceil(self.zero))


@torch.no_grad()
def act_grid(q: Quantizer) -> ActGrid:
    """The integer description of an (initialised) activation quantizer."""
    if not bool(q.initialized):
        raise ExportError("activation quantizer is not initialised: calibrate the model or run one forward first")
    iv = q.interval(torch.zeros(()))
    if iv.lo.numel() != 1 or iv.step.numel() != 1:
        raise ExportError("per-channel activation quantizers cannot be exported")
    n = q.levels - 1
    lo, hi = float(iv.lo), float(iv.hi)
    delta = (hi - lo) / n
    m = -lo / delta
    # Only a zero point that is exact up to float32 rounding: a learned lower bound a hair off
    # the grid (EWGS, lo = -7e-5) moves every rounding boundary and must be shifted explicitly.
    if abs(m - round(m)) <= 1e-6 * max(1.0, abs(m)) and 0 <= round(m) <= 255:
        shift, q_zero = None, int(round(m))
    else:
        shift, q_zero = -lo, 0
    return ActGrid(delta, q_zero, shift, n, float(iv.step), float(iv.zero))

"""Quantizer base class: one small nn.Module per weight or activation tensor."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from qdistill.quant.fake_quant import BACKWARDS, fake_quant
from qdistill.registry import Registry

__all__ = ["QUANTIZERS", "Interval", "Quantizer"]

QUANTIZERS: Registry[type[Quantizer]] = Registry("quantizer")


@dataclass
class Interval:
    """What a quantizer hands to `fake_quant`: clip range, output map and gradient rule."""

    x: Tensor  # the (possibly transformed) input to clip
    lo: Tensor
    hi: Tensor
    step: Tensor  # output = (level - zero) * step
    zero: float = 0.0
    range_rule: str = "full"


class Quantizer(nn.Module):
    """Fake-quantizes one tensor to ``2**bits`` levels.

    Subclasses implement ``init_from(x)`` (set ranges from a first tensor, e.g. a calibration
    batch) and ``interval(x)``. Activation quantizers decide at initialisation whether their input
    is signed: after a ReLU all values are >= 0 and an unsigned grid keeps every level useful.

    Args:
        bits: 1..8.
        is_weight: weights are always signed; activations are signed only if calibration sees a
            negative value.
        channel_shape: broadcast shape of per-channel ranges, e.g. ``(C, 1, 1, 1)`` for a conv
            weight; ``()`` for one range per tensor.
        backward: Round's backward: ``ste``, ``ewgs`` or ``generic``.
        coef: initial EWGS delta or generic mu.
    """

    def __init__(
        self, bits: int, *, is_weight: bool, channel_shape: tuple[int, ...] = (), backward: str = "ste", coef: float = 1e-3
    ):
        super().__init__()
        if not 1 <= int(bits) <= 8:
            raise ValueError(f"bits must be in 1..8, got {bits}")
        if backward not in BACKWARDS:
            raise ValueError(f"unknown backward {backward!r}; choose one of {BACKWARDS}")
        self.bits = int(bits)
        self.is_weight = is_weight
        self.channel_shape = tuple(channel_shape)
        self.channels = self.channel_shape[0] if self.channel_shape else 1
        self.backward_mode = backward
        self.register_buffer("coef", torch.tensor(float(coef)))
        self.register_buffer("signed", torch.tensor(is_weight))
        self.register_buffer("initialized", torch.tensor(False))
        self.capture = False  # set by the EWGS Hessian estimator to keep the output for autograd
        self.captured: Tensor | None = None
        self.captured_scale = 1.0  # output units per unit of the normalised grid x_q, for the Hessian

    @property
    def keeps_scale(self) -> bool:
        """Whether quantized weights keep the scale of the float weights (False: BatchNorm
        statistics of a pretrained model no longer fit; see `calibrate`)."""
        return True

    @property
    def levels(self) -> int:
        return 2**self.bits

    @property
    def n(self) -> int:
        """Number of steps between the lowest and highest level."""
        return 2**self.bits - 1

    def param_shape(self) -> tuple[int, ...]:
        """Shape of a range parameter."""
        return self.channel_shape

    def reduce_dims(self, x: Tensor) -> tuple[int, ...]:
        return tuple(range(1, x.dim())) if self.channel_shape else tuple(range(x.dim()))

    @torch.no_grad()
    def init_from(self, x: Tensor) -> None:
        raise NotImplementedError

    def interval(self, x: Tensor) -> Interval:
        raise NotImplementedError

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set signedness and ranges from ``x``; later calls re-initialise (calibration)."""
        if not self.is_weight:
            self.signed.fill_(bool((x < 0).any()))
        self.init_from(x.detach())
        self.initialized.fill_(True)

    def forward(self, x: Tensor) -> Tensor:
        if not bool(self.initialized):
            self.initialize(x)
        iv = self.interval(x)
        y = fake_quant(iv.x, iv.lo, iv.hi, iv.step, iv.zero, self.levels, self.backward_mode, self.coef, iv.range_rule)
        if self.capture and y.requires_grad:
            y.retain_grad()
            self.captured = y
            self.captured_scale = float((iv.step * self.n).detach().abs().mean())
        return y

    @torch.no_grad()
    def project(self, x: Tensor) -> Tensor:
        """Map ``x`` (e.g. a teacher feature) onto this quantizer's current grid, detached.

        This is SQuaT's projection: the target is a tensor the student can represent exactly.
        """
        if not bool(self.initialized):
            raise RuntimeError("quantizer is not initialised: calibrate the model or run one forward first")
        iv = self.interval(x)
        return fake_quant(iv.x, iv.lo, iv.hi, iv.step, iv.zero, self.levels).detach()

    def extra_repr(self) -> str:
        kind = "weight" if self.is_weight else "act"
        return f"{kind}, bits={self.bits}, signed={bool(self.signed)}, backward={self.backward_mode}"

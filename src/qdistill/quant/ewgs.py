"""EWGS quantizer (Lee, Kim & Ham, CVPR 2021): learnable interval, normalised levels, output scale."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from qdistill.quant.base import QUANTIZERS, Interval, Quantizer
from qdistill.quant.pact import activation_range
from qdistill.quant.range_init import zero_aligned

__all__ = ["EWGSQuantizer"]


@QUANTIZERS.register("ewgs")
class EWGSQuantizer(Quantizer):
    """``x_n = clamp((x - l) / (u - l), 0, 1)`` quantized on [0, 1], then scaled by a learnable ``s``.

    Weights map the levels to ``s * (2 x_q - 1)`` (symmetric), activations to ``s * x_q``.
    Signed activations (calibration saw a negative value) keep zero at zero: ``[l, u]`` moves by
    less than one step so that 0 is a level (`zero_aligned`), and the output is
    ``(k - z) * s / (L - 1)`` with ``z`` that level's integer index; at 1 bit a signed grid is
    ``{-s/2, +s/2}`` split at 0. Initialisation follows the EWGS paper: weights l, u = -+3 std,
    activations from calibration-batch statistics. The paper applies one output scale after the
    convolution; here each quantizer owns its scale, which is the same function (the product of the
    two is the paper's scale) and keeps quantizers independent of the layer.

    ``weight_init: minmax`` / ``mse`` give weights the signed-activation grid instead: ``[l, u]``
    from the range's min/max (`qdistill.quant.range_init`), zero-aligned, output
    ``(k - z) * s / (L - 1)`` with ``s = u - l``: round-to-nearest on min/max at the start, with
    l, u and s still learnable.
    """

    default_backward = "ewgs"
    weight_inits = ("default", "minmax", "mse")

    def __init__(self, bits: int, **kw) -> None:
        super().__init__(bits, **kw)
        shape = self.param_shape()
        self.lower = nn.Parameter(torch.zeros(shape))
        self.upper = nn.Parameter(torch.ones(shape))
        self.out_scale = nn.Parameter(torch.ones(shape))

    def init_from(self, x: Tensor) -> None:
        if self.asymmetric:
            lo, hi = self.asymmetric_range(x)
            self.lower.copy_(lo)
            self.upper.copy_(hi)
            self.out_scale.copy_(hi - lo)
            return
        if self.is_weight:
            dims = self.reduce_dims(x)
            correction = 1 if x.numel() // self.channels > 1 else 0  # a single weight has no spread
            std = (
                x.float()
                .std(dim=dims, correction=correction, keepdim=bool(self.channel_shape))
                .view(self.param_shape())
            )
            self.upper.copy_(3 * std)
            self.lower.copy_(-3 * std)
            self.out_scale.copy_(3 * std)
            return
        lo, hi = activation_range(x, self.bits)
        self.lower.fill_(lo)
        self.upper.fill_(hi)
        self.out_scale.fill_(hi - lo)

    def interval(self, x: Tensor) -> Interval:
        lo = self.lower
        # u > l by at least a few ulps of l (a bare 1e-12 vanishes beside l ~ 1 in float32: 0/0 at x = l),
        # and by 1e-12 near l = 0, so tiny (1e-7) activations keep their grid
        floor = (lo.detach().abs() * (4 * torch.finfo(lo.dtype).eps)).clamp_min(1e-12)
        hi = lo + torch.maximum(self.upper - lo, floor)
        s = self.out_scale
        if self.is_weight and not self.asymmetric:
            return Interval(x, lo, hi, s * (2 / self.n), self.n / 2)
        if not self.signed:
            return Interval(x, lo, hi, s / self.n)
        if self.bits == 1:  # two levels and no zero: the sign of x
            half = (hi - lo) / 2
            return Interval(x, -half, half, s, 0.5)
        lo, hi, zero = zero_aligned(lo, hi, self.n)
        return Interval(x, lo, hi, s / self.n, zero)

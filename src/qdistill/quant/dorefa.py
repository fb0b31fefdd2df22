"""DoReFa-Net quantizer (Zhou et al. 2016): tanh-normalised weights, [0, 1] activations."""

from __future__ import annotations

import torch
from torch import Tensor

from qdistill.quant.base import QUANTIZERS, Interval, Quantizer

__all__ = ["DoReFaQuantizer", "signed_clip"]


def signed_clip(x: Tensor, a: Tensor, bits: int, range_rule: str = "full") -> Interval:
    """A signed activation clipped to ``[-a, a]`` with zero as a level.

    2^b levels ``(k - 2^(b-1)) * a / 2^(b-1)``, k = 0..2^b - 1: from -a to a - a / 2^(b-1), LSQ's
    signed grid (an even number of levels cannot be symmetric and hold 0). At 1 bit: ``{-a, +a}``,
    the sign of x.
    """
    if bits == 1:
        return Interval(x, -a, a, 2 * a, 0.5, range_rule)
    half = 2 ** (bits - 1)
    step = a / half
    return Interval(x, -a, a - step, step, float(half), range_rule)


@QUANTIZERS.register("dorefa")
class DoReFaQuantizer(Quantizer):
    """No learnable range.

    Weights: ``w_n = tanh(w) / (2 max|tanh(w)|) + 1/2`` is quantized on [0, 1] and mapped to
    ``2 w_q - 1`` in [-1, 1]; at 1 bit the paper's ``sign(w) * E|w|`` is used instead.
    Activations: ``clamp(x, 0, 1)`` (``clamp(x, -1, 1)`` on the grid of `signed_clip` when signed).
    """

    @property
    def keeps_scale(self) -> bool:
        return self.bits == 1  # 2-8 bit weights live in [-1, 1] whatever the float weights' scale

    def init_from(self, x: Tensor) -> None:  # nothing to learn or calibrate
        return None

    def interval(self, x: Tensor) -> Interval:
        zero, one = x.new_zeros(()), x.new_ones(())
        if self.is_weight:
            return self._weight_interval(x)
        if self.signed:
            return signed_clip(x, one, self.bits)
        return Interval(x, zero, one, one / self.n)

    def _weight_interval(self, w: Tensor) -> Interval:
        t = torch.tanh(w)
        peak = t.abs().amax(dim=self.reduce_dims(w), keepdim=bool(self.channel_shape)).clamp_min(1e-12)
        x = t / (2 * peak) + 0.5
        zero, one = w.new_zeros(()), w.new_ones(())
        if self.bits == 1:
            mag = w.detach().abs().mean(dim=self.reduce_dims(w), keepdim=bool(self.channel_shape))
            return Interval(x, zero, one, 2 * mag, 0.5)
        return Interval(x, zero, one, one * (2 / self.n), self.n / 2)

"""PACT quantizer (Choi et al. 2018): a learnable activation clip alpha."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from qdistill.quant.base import QUANTIZERS, Interval
from qdistill.quant.dorefa import DoReFaQuantizer, signed_clip

__all__ = ["PACTQuantizer", "activation_range"]


@torch.no_grad()
def activation_range(x: Tensor, bits: int) -> tuple[float, float]:
    """A robust [lo, hi] for an activation tensor from calibration statistics.

    Non-negative inputs (after ReLU) are treated as a half-normal: hi = 3 sigma of the underlying
    normal, sigma = std / sqrt(1 - 2/pi) (the EWGS initialisation). At few levels that range puts
    the rounding thresholds so high that most activations round to zero (at 1 bit the threshold
    would be 1.5 sigma: the network goes dead), so hi is capped by LSQ's step rule,
    (2^b - 1) * 2 mean|x| / sqrt(2^b - 1). Signed inputs use mean +- 3 std.
    """
    x = x.float()
    if bool((x < 0).any()):
        m, s = x.mean().item(), x.std().item()
        return m - 3 * s, m + 3 * s
    hi = 3.0 * x.std().item() / math.sqrt(1 - 2 / math.pi)
    if bits == 1:
        hi = min(hi, 2 * x.abs().mean().item())
    return 0.0, hi if hi > 0 else 1e-4  # a floor only for an all-zero input: tiny activations keep their scale


@QUANTIZERS.register("pact")
class PACTQuantizer(DoReFaQuantizer):
    """Activations: ``y = clamp(x, 0, alpha)`` quantized to 2^b levels of [0, alpha].

    alpha learns only from clipped elements (dy/dalpha = 1 where x >= alpha), PACT's eq. 3; the
    published SQAKD code leaves alpha without gradient. Signed inputs clip to [-alpha, alpha]
    on the grid of `signed_clip` (zero is a level). Weights follow DoReFa, as in the PACT paper.
    """

    def __init__(self, bits: int, **kw) -> None:
        super().__init__(bits, **kw)
        if not self.is_weight:
            self.alpha = nn.Parameter(torch.tensor(10.0))  # the paper's default; calibration replaces it

    def init_from(self, x: Tensor) -> None:
        if not self.is_weight:
            lo, hi = activation_range(x, self.bits)
            self.alpha.fill_(max(hi, -lo) if self.signed else hi)

    def interval(self, x: Tensor) -> Interval:
        if self.is_weight:
            return self._weight_interval(x)
        a = self.alpha.abs().clamp_min(1e-6)
        if self.signed:
            return signed_clip(x, a, self.bits, range_rule="clipped")
        return Interval(x, x.new_zeros(()), a, a / self.n, range_rule="clipped")

"""LSQ quantizer (Esser et al., ICLR 2020): a learnable step size."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor, nn

from qdistill.quant.base import QUANTIZERS, Interval, Quantizer
from qdistill.quant.range_init import zero_aligned

__all__ = ["LSQQuantizer"]


def _replicas() -> int:
    """Data-parallel copies of this step: the world size inside a process group, else 1.

    Each rank sees 1/world of the batch and DDP / FSDP average the ranks' gradients, so the
    gradient scale must count the global batch's elements for N ranks to train as one process.
    """
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _grad_scaled(p: Tensor, g: float) -> Tensor:
    """Value of ``p`` exactly (``pg - pg`` is 0), with its gradient multiplied by ``g``.

    The usual ``(p - p g).detach() + p g`` is off by an ulp that depends on ``g``, hence on the
    input's size: the same image quantized differently in batches of 1 and 2.
    """
    pg = p * g
    return p.detach() + (pg - pg.detach())


@QUANTIZERS.register("lsq")
class LSQQuantizer(Quantizer):
    """``y = clamp(round(x / s), -Qn, Qp) * s`` with a learnable step ``s``.

    Signed: Qn = 2^(b-1), Qp = 2^(b-1) - 1; unsigned: Qn = 0, Qp = 2^b - 1; binary signed weights
    use {-s, +s}. The step's gradient is scaled by 1 / sqrt(N * Qp) and initialised to
    2 mean|x| / sqrt(Qp), as in the paper.

    ``weight_init: minmax`` / ``mse`` make the weight grid asymmetric, ``(k - z) * s`` for
    k = 0..2^b - 1, with ``s`` and the integer zero point ``z`` (a buffer, fixed) from the range's
    min/max (`qdistill.quant.range_init`): at the start exactly round-to-nearest on min/max; then
    the step learns (gradient scale 1 / sqrt(N (2^b - 1))) and the grid stretches around ``z``.
    """

    weight_inits = ("default", "minmax", "mse")

    def __init__(self, bits: int, **kw) -> None:
        super().__init__(bits, **kw)
        self.step = nn.Parameter(torch.ones(self.param_shape()))
        if self.asymmetric:
            self.register_buffer("zero_point", torch.zeros(self.param_shape()))

    def bounds(self) -> tuple[int, int]:
        """(Qn, Qp) in units of the step."""
        if not self.signed:
            return 0, 2**self.bits - 1
        if self.bits == 1:
            return 1, 1
        return 2 ** (self.bits - 1), 2 ** (self.bits - 1) - 1

    def init_from(self, x: Tensor) -> None:
        if self.asymmetric:
            lo, hi, zero = zero_aligned(*self.asymmetric_range(x), self.n)
            self.step.copy_((hi - lo) / self.n)
            self.zero_point.copy_(zero)
            return
        qp = self.bounds()[1]
        mean_abs = (
            x.float().abs().mean(dim=self.reduce_dims(x), keepdim=bool(self.channel_shape)).view(self.param_shape())
        )
        self.step.copy_((2 * mean_abs / math.sqrt(qp)).clamp_min(1e-8))

    def interval(self, x: Tensor) -> Interval:
        n = x.numel() // max(self.channels, 1) * (1 if self.is_weight else _replicas())
        if self.asymmetric:
            s = _grad_scaled(self.step, 1.0 / math.sqrt(n * self.n)).abs().clamp_min(1e-8)
            z = self.zero_point
            return Interval(x, -z * s, (self.n - z) * s, s, z)
        qn, qp = self.bounds()
        s = _grad_scaled(self.step, 1.0 / math.sqrt(n * qp)).abs().clamp_min(1e-8)
        if self.bits == 1 and self.signed:  # {-s, +s}
            return Interval(x, -s, s, 2 * s, 0.5)
        return Interval(x, -qn * s, qp * s, s, float(qn))

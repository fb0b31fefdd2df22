"""Per-token activation quantizer: a range per row, computed on the fly (nothing learned)."""

from __future__ import annotations

from torch import Tensor

from qdistill.quant.base import Interval, Quantizer
from qdistill.quant.range_init import zero_aligned

__all__ = ["TokenQuantizer"]


class TokenQuantizer(Quantizer):
    """Each token (a vector on the last dimension) gets its own ``[min(x, 0), max(x, 0)]``.

    The range is moved onto a grid that holds 0 (`zero_aligned`), so zero is exact and each token
    has an integer zero point: 2^b levels ``(k - z) * (hi - lo) / (2^b - 1)``. Transformer
    activations differ by orders of magnitude between tokens, which one learned range per tensor
    cannot follow. The range is detached: gradients reach the input only (straight through).
    """

    def __init__(self, bits: int, **kw) -> None:
        super().__init__(bits, is_weight=False, **kw)

    def init_from(self, x: Tensor) -> None:  # nothing to calibrate
        return None

    def interval(self, x: Tensor) -> Interval:
        d = x.detach()
        lo = d.amin(dim=-1, keepdim=True).clamp_max(0.0)
        hi = d.amax(dim=-1, keepdim=True).clamp_min(0.0)
        hi = lo + (hi - lo).clamp_min(1e-8)  # an all-zero token
        lo, hi, zero = zero_aligned(lo, hi, self.n)
        return Interval(x, lo, hi, (hi - lo) / self.n, zero)

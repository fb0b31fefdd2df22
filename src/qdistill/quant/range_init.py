"""Where a learnable weight range starts: the method's own rule, min/max, or the min/max shrink of least error.

``minmax`` and ``mse`` put each range (per tensor, output channel or group) on an asymmetric grid
with an integer zero point, the usual round-to-nearest of LLM weights: ``lo = min(w, 0)``,
``hi = max(w, 0)`` (the range holds 0, so the zero point is a level), moved by less than a step
so that 0 is exactly a level (`zero_aligned`). ``mse`` scales ``[lo, hi]`` by the factor of
`SHRINKS` that gives each range the least squared rounding error: at 3 bits and below, clipping a
few outliers buys a finer step for every other weight.
"""

from __future__ import annotations

import torch
from torch import Tensor

from qdistill.quant.fake_quant import quant_level

__all__ = ["SHRINKS", "WEIGHT_INITS", "weight_range", "zero_aligned"]

WEIGHT_INITS = ("default", "minmax", "mse")
SHRINKS = tuple(1.0 - 0.025 * i for i in range(21))  # 1.0, 0.975, ..., 0.5


def zero_aligned(lo: Tensor, hi: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor]:
    """Move ``[lo, hi]`` by less than one step so that 0 is one of its ``n + 1`` levels.

    Returns ``(lo', hi', zero)`` with ``zero`` the integer level of x = 0 (clamped to 0..n): an
    integer zero point keeps 0 exact and is what an integer runtime needs. ``zero`` is detached,
    a function of the current range, so gradients reach ``lo``/``hi`` through the step only.
    """
    delta = (hi - lo) / n
    zero = torch.round(-lo / delta).clamp(0, n).detach()
    lo = -zero * delta
    return lo, lo + n * delta, zero


@torch.no_grad()
def weight_range(x: Tensor, how: str, n: int, dims: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """``(lo, hi)`` of ``x`` reduced over ``dims`` (kept as size 1) for ``minmax`` or ``mse``."""
    lo = x.amin(dim=dims, keepdim=True).clamp_max(0)
    hi = torch.maximum(x.amax(dim=dims, keepdim=True).clamp_min(0), lo + 1e-8)  # an all-zero row keeps a step
    if how == "minmax":
        return lo, hi
    best_err, best = None, torch.ones_like(lo)
    for p in SHRINKS:
        p_lo, p_hi, zero = zero_aligned(p * lo, p * hi, n)
        err = ((quant_level(x, p_lo, p_hi, n) - zero) * ((p_hi - p_lo) / n) - x).pow(2).sum(dim=dims, keepdim=True)
        if best_err is None:
            best_err = err
            continue
        best = torch.where(err < best_err, p, best)  # ties keep the wider range
        best_err = torch.minimum(err, best_err)
    return best * lo, best * hi

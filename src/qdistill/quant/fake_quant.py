"""The one differentiable primitive every quantizer uses: Clip -> Round -> rescale.

Every quantizer in the SQAKD family (Zhao & Zhao, AISTATS 2024, section 3.1) reduces to

    t   = (x - lo) / (hi - lo)              normalise to the clipping interval
    x_c = clamp(t, 0, 1)                    Clip
    k   = round(x_c * (L - 1))              Round to one of L = 2^b levels, x_q = k / (L - 1)
    y   = (k - zero) * step                 back to the value scale

so one fused autograd Function serves PACT, LSQ, DoReFa and EWGS. Writing the output as an
integer level times a step keeps zero exact and is exactly what an integer runtime computes.
Fusing matters: written as a chain of a dozen tensor ops the quantizers dominate a CPU training
step. The backward of Round is chosen independently of the forward (SQAKD's decoupled backward):

* ``ste``:     dL/dx_c = g
* ``ewgs``:    dL/dx_c = g * (1 + delta * sign(g) * (x_c - x_q))       (Lee et al., CVPR 2021)
* ``generic``: dL/dx_c = g + mu * (x_c - x_q)

where g = dL/dx_q. Gradients reach ``lo``/``hi`` through the normalisation of in-range elements
and ``step`` through the output map, as autograd would give for the composition. The ``clipped``
range rule instead lets the range learn only from clipped elements, which is PACT's published
gradient (Choi et al. 2018, eq. 3): in-range outputs count as the identity.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["BACKWARDS", "RANGE_RULES", "fake_quant"]

BACKWARDS = ("ste", "ewgs", "generic")
RANGE_RULES = ("full", "clipped")


def _reduce(grad: Tensor, like: Tensor) -> Tensor:
    """Sum a full-size gradient down to a (broadcast) parameter's shape."""
    return grad.sum_to_size(like.shape) if grad.shape != like.shape else grad


class _FakeQuant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lo, hi, step, coef, zero: float, levels: int, backward: str, range_rule: str):  # type: ignore[override]
        n = levels - 1
        k = (x - lo).mul_(1.0 / (hi - lo)).clamp_(0.0, 1.0).mul_(n).round_()
        ctx.save_for_backward(x, lo, hi, step, coef)
        ctx.zero, ctx.levels, ctx.backward_mode, ctx.range_rule = zero, levels, backward, range_rule
        return k.sub_(zero).mul_(step)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        x, lo, hi, step, coef = ctx.saved_tensors
        n = ctx.levels - 1
        need_x, need_lo, need_hi, need_step = ctx.needs_input_grad[:4]
        inv = 1.0 / (hi - lo)
        t = (x - lo) * inv
        inside = (t >= 0) & (t <= 1)
        x_c = t.clamp(0.0, 1.0)
        k = torch.round(x_c * n)
        g_q = g * (step * n)  # dL/dx_q with x_q = k / n
        if ctx.backward_mode == "ewgs":
            g_c = g_q * (1 + coef * torch.sign(g_q) * (x_c - k / n))
        elif ctx.backward_mode == "generic":
            g_c = g_q + coef * (x_c - k / n)
        else:
            g_c = g_q
        zero_t = torch.zeros((), dtype=g.dtype, device=g.device)
        g_in = torch.where(inside, g_c, zero_t)
        grad_x = g_in * inv if need_x else None
        grad_lo = grad_hi = grad_step = None
        full = ctx.range_rule == "full"
        if full and need_lo:
            grad_lo = _reduce(g_in * (t - 1), lo) * inv
        if full and need_hi:
            grad_hi = -_reduce(g_in * t, hi) * inv
        if need_step:
            g_step = g * (k - ctx.zero)
            if not full:  # "clipped": only elements outside the interval move the range
                g_step = torch.where(inside, zero_t, g_step)
            grad_step = _reduce(g_step, step)
        return grad_x, grad_lo, grad_hi, grad_step, None, None, None, None, None


def fake_quant(
    x: Tensor,
    lo: Tensor,
    hi: Tensor,
    step: Tensor,
    zero: float,
    levels: int,
    backward: str = "ste",
    coef: Tensor | float = 0.0,
    range_rule: str = "full",
) -> Tensor:
    """Quantize ``x`` to ``levels`` points of ``[lo, hi]`` and output ``(k - zero) * step``.

    ``lo``, ``hi`` and ``step`` are tensors broadcastable to ``x`` (scalars for per-tensor,
    ``(C, 1, 1, 1)`` for per-channel); ``zero`` is the level index that maps to 0 (it may be a
    half-integer for symmetric grids without a zero). ``coef`` is EWGS's delta or the generic mu.

    Example:
        >>> z, o = torch.tensor(0.0), torch.tensor(1.0)
        >>> fake_quant(torch.tensor([-0.2, 0.2, 0.4, 0.9, 1.5]), z, o, o / 3, 0.0, levels=4)
        tensor([0.0000, 0.3333, 0.3333, 1.0000, 1.0000])
    """
    if levels < 2:
        raise ValueError(f"levels must be >= 2, got {levels}")
    if backward not in BACKWARDS:
        raise ValueError(f"unknown backward {backward!r}; choose one of {BACKWARDS}")
    if range_rule not in RANGE_RULES:
        raise ValueError(f"unknown range_rule {range_rule!r}; choose one of {RANGE_RULES}")
    coef_t = coef if isinstance(coef, Tensor) else torch.tensor(float(coef), dtype=x.dtype, device=x.device)
    return _FakeQuant.apply(x, lo, hi, step, coef_t, float(zero), levels, backward, range_rule)

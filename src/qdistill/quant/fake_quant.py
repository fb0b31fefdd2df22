"""The one differentiable primitive every quantizer uses: Clip -> Round -> rescale.

Every quantizer in the SQAKD family (Zhao & Zhao, AISTATS 2024, section 3.1) reduces to

    t   = (x - lo) / (hi - lo)              normalise to the clipping interval
    x_c = clamp(t, 0, 1)                    Clip
    x_q = round(x_c * (L - 1)) / (L - 1)    Round to L = 2^b levels
    y   = scale * x_q + shift               back to the value scale

so one fused autograd Function serves PACT, LSQ, DoReFa and EWGS. Fusing matters: written as a
chain of a dozen tensor ops the quantizers dominate a CPU training step. The backward of Round is
chosen independently of the forward (the "decoupled backward" of SQAKD):

* ``ste``:     dL/dx_c = g
* ``ewgs``:    dL/dx_c = g * (1 + delta * sign(g) * (x_c - x_q))       (Lee et al., CVPR 2021)
* ``generic``: dL/dx_c = g + mu * (x_c - x_q)

where g = dL/dx_q. Gradients reach ``lo``/``hi`` through the normalisation of in-range elements
and ``scale``/``shift`` through the output map, as autograd would give for the composition. The
``clipped`` range rule instead lets the range learn only from clipped elements, which is PACT's
published gradient (Choi et al. 2018, eq. 3): in-range outputs count as the identity.
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
    def forward(ctx, x, lo, hi, scale, shift, coef, levels: int, backward: str, range_rule: str):  # type: ignore[override]
        n = levels - 1
        inv = 1.0 / (hi - lo)
        x_q = (x - lo).mul_(inv).clamp_(0.0, 1.0).mul_(n).round_().div_(n)
        ctx.save_for_backward(x, lo, hi, scale, coef)
        ctx.levels, ctx.backward_mode, ctx.range_rule = levels, backward, range_rule
        ctx.shift_shape = shift.shape
        return torch.addcmul(shift, x_q, scale)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        x, lo, hi, scale, coef = ctx.saved_tensors
        n = ctx.levels - 1
        need_x, need_lo, need_hi, need_scale, need_shift = ctx.needs_input_grad[:5]
        inv = 1.0 / (hi - lo)
        t = (x - lo) * inv
        inside = (t >= 0) & (t <= 1)
        x_c = t.clamp(0.0, 1.0)
        x_q = torch.round(x_c * n) / n
        g_q = g * scale
        if ctx.backward_mode == "ewgs":
            g_c = g_q * (1 + coef * torch.sign(g_q) * (x_c - x_q))
        elif ctx.backward_mode == "generic":
            g_c = g_q + coef * (x_c - x_q)
        else:
            g_c = g_q
        g_in = torch.where(inside, g_c, torch.zeros((), dtype=g_c.dtype))
        grad_x = g_in * inv if need_x else None
        grad_lo = grad_hi = grad_scale = grad_shift = None
        if ctx.range_rule == "full":
            if need_lo:
                grad_lo = _reduce(g_in * (t - 1), lo) * inv
            if need_hi:
                grad_hi = -_reduce(g_in * t, hi) * inv
            if need_scale:
                grad_scale = _reduce(g * x_q, scale)
        elif need_scale:  # "clipped": only elements outside the interval move the range
            grad_scale = _reduce(torch.where(inside, torch.zeros((), dtype=g.dtype), g * x_q), scale)
        if need_shift:
            g_shift = g if ctx.range_rule == "full" else torch.where(inside, torch.zeros((), dtype=g.dtype), g)
            grad_shift = g_shift.sum_to_size(ctx.shift_shape)
        return grad_x, grad_lo, grad_hi, grad_scale, grad_shift, None, None, None, None


def fake_quant(
    x: Tensor,
    lo: Tensor,
    hi: Tensor,
    scale: Tensor,
    shift: Tensor,
    levels: int,
    backward: str = "ste",
    coef: Tensor | float = 0.0,
    range_rule: str = "full",
) -> Tensor:
    """Quantize ``x`` to ``levels`` points of ``[lo, hi]`` and map them to ``scale * x_q + shift``.

    ``lo``, ``hi``, ``scale`` and ``shift`` are tensors broadcastable to ``x`` (scalars for
    per-tensor, ``(C, 1, 1, 1)`` for per-channel). ``coef`` is EWGS's delta or the generic mu.

    Example:
        >>> z, o = torch.tensor(0.0), torch.tensor(1.0)
        >>> fake_quant(torch.tensor([-0.2, 0.2, 0.4, 0.9, 1.5]), z, o, o, z, levels=4)
        tensor([0.0000, 0.3333, 0.3333, 1.0000, 1.0000])
    """
    if levels < 2:
        raise ValueError(f"levels must be >= 2, got {levels}")
    if backward not in BACKWARDS:
        raise ValueError(f"unknown backward {backward!r}; choose one of {BACKWARDS}")
    if range_rule not in RANGE_RULES:
        raise ValueError(f"unknown range_rule {range_rule!r}; choose one of {RANGE_RULES}")
    coef_t = coef if isinstance(coef, Tensor) else torch.tensor(float(coef), dtype=x.dtype, device=x.device)
    return _FakeQuant.apply(x, lo, hi, scale, shift, coef_t, levels, backward, range_rule)

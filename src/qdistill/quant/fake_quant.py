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

__all__ = ["BACKWARDS", "RANGE_RULES", "compiled_kernels_enabled", "fake_quant", "quant_level", "use_compiled_kernels"]

BACKWARDS = ("ste", "ewgs", "generic")
RANGE_RULES = ("full", "clipped")


def _reduce(grad: Tensor, like: Tensor) -> Tensor:
    """Sum a full-size gradient down to a (broadcast) parameter's shape."""
    return grad.sum_to_size(like.shape)


def quant_level(x: Tensor, lo: Tensor, hi: Tensor, n: int) -> Tensor:
    """The integer level ``k`` (as float, 0..n) of ``x`` on ``n + 1`` levels of ``[lo, hi]``.

    The one level formula: the fake-quant forward and the integer form (`qdistill.quant.convert`)
    both call it, so their levels agree bit for bit.
    """
    return (x - lo).mul_(1.0 / (hi - lo)).clamp_(0.0, 1.0).mul_(n).round_()


def _forward(x: Tensor, lo: Tensor, hi: Tensor, step: Tensor, n: int, zero: Tensor | float) -> Tensor:
    return quant_level(x, lo, hi, n).sub_(zero).mul_(step)


def _backward(
    g: Tensor,
    x: Tensor,
    lo: Tensor,
    hi: Tensor,
    step: Tensor,
    coef: Tensor,
    n: int,
    zero: Tensor | float,
    mode: str,
    full_range: bool,
    range_grads: bool,
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """dL/dx, and unreduced terms for the range: sum(g_in * t), sum(g_in) and dL/dstep.

    With t the normalised input and g_in the gradient reaching the clip for in-range elements:
    dL/dlo = (sum(g_in * t) - sum(g_in)) / (hi - lo) and dL/dhi = -sum(g_in * t) / (hi - lo).
    """
    inv = 1.0 / (hi - lo)
    t = (x - lo) * inv
    inside = (t >= 0) & (t <= 1)
    x_c = t.clamp(0.0, 1.0)
    k = torch.round(x_c * n)
    g_q = g * (step * n)  # dL/dx_q with x_q = k / n
    if mode == "ewgs":
        g_c = g_q * (1 + coef * torch.sign(g_q) * (x_c - k / n))
    elif mode == "generic":
        g_c = g_q + coef * (x_c - k / n)
    else:
        g_c = g_q
    g_in = torch.where(inside, g_c, 0.0)
    if not range_grads:
        return g_in * inv, None, None, None
    g_step = g * (k - zero)
    if full_range:
        return g_in * inv, g_in * t, g_in, g_step
    # "clipped" (PACT): only elements outside the interval move the range
    return g_in * inv, None, None, torch.where(inside, 0.0, g_step)


_COMPILED: dict[str, object] = {}


def _plain(*tensors: Tensor) -> list[Tensor]:
    """The tensors as plain, detached Tensors: a compiled kernel handed a Parameter guards on its
    type and static shape, and recompiles for every layer."""
    return [t.detach() for t in tensors]


def _zero_tensor(zero: Tensor | float, like: Tensor) -> Tensor:
    """A compiled kernel specialises on a float argument (one graph per zero point): give it a tensor."""
    return zero if isinstance(zero, Tensor) else like.new_tensor(zero)


def use_compiled_kernels(enabled: bool = True, backend: str = "inductor") -> None:
    """Fuse the quantizer's forward and backward into generated kernels with ``torch.compile``.

    About 9x faster per quantizer on CPU, at a one-off compile cost (tens of seconds on CPU, cached
    on disk by torch); worth it for runs longer than a few minutes and on GPU. Off by default.
    Shapes are dynamic and the kernels see plain tensors, so one compile serves every layer of a
    given rank (a few graphs per model, far below dynamo's recompile limit). ``backend="eager"``
    traces without generating code (tests).
    """
    if enabled:
        _COMPILED["forward"] = torch.compile(_forward, dynamic=True, backend=backend)
        _COMPILED["backward"] = torch.compile(_backward, dynamic=True, backend=backend)
    else:
        _COMPILED.clear()


def compiled_kernels_enabled() -> bool:
    """Whether `use_compiled_kernels` is on (callbacks restore the switch they found)."""
    return bool(_COMPILED)


class _FakeQuant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lo, hi, step, coef, zero, levels: int, backward: str, range_rule: str):  # type: ignore[override]
        # a float zero point stays a Python number: no tensor is made per layer and step
        ctx.save_for_backward(x, lo, hi, step, coef, *([zero] if isinstance(zero, Tensor) else []))
        ctx.zero = None if isinstance(zero, Tensor) else zero
        ctx.levels, ctx.backward_mode, ctx.range_rule = levels, backward, range_rule
        compiled = _COMPILED.get("forward")
        if compiled is None:
            return _forward(x, lo, hi, step, levels - 1, zero)
        return compiled(*_plain(x, lo, hi, step), levels - 1, _zero_tensor(zero, x))

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        x, lo, hi, step, coef, *saved_zero = ctx.saved_tensors
        zero = saved_zero[0] if saved_zero else ctx.zero
        need = ctx.needs_input_grad
        # Double backward (EWGS's Hessian estimate) must differentiate this code: stay eager there.
        compiled = None if torch.is_grad_enabled() else _COMPILED.get("backward")
        if compiled is None:
            impl, args = _backward, (g, x, lo, hi, step, coef, ctx.levels - 1, zero)
        else:
            impl, args = compiled, (*_plain(g, x, lo, hi, step, coef), ctx.levels - 1, _zero_tensor(zero, x))
        gx, g_t, g_in, g_step = impl(*args, ctx.backward_mode, ctx.range_rule == "full", any(need[1:4]))
        grad_lo = grad_hi = None
        if g_t is not None:
            inv = 1.0 / (hi - lo)
            s_t, s_in = _reduce(g_t, hi), _reduce(g_in, hi)
            grad_lo = (s_t - s_in) * inv if need[1] else None
            grad_hi = -s_t * inv if need[2] else None
        grad_step = _reduce(g_step, step) if need[3] and g_step is not None else None
        return gx if need[0] else None, grad_lo, grad_hi, grad_step, None, None, None, None, None


def fake_quant(
    x: Tensor,
    lo: Tensor,
    hi: Tensor,
    step: Tensor,
    zero: Tensor | float,
    levels: int,
    backward: str = "ste",
    coef: Tensor | float = 0.0,
    range_rule: str = "full",
) -> Tensor:
    """Quantize ``x`` to ``levels`` points of ``[lo, hi]`` and output ``(k - zero) * step``.

    ``lo``, ``hi`` and ``step`` are tensors broadcastable to ``x`` (scalars for per-tensor,
    ``(C, 1, 1, 1)`` for per-channel); ``zero`` is the level index that maps to 0 (it may be a
    half-integer for symmetric grids without a zero, and a detached tensor when it follows a
    learned range). ``coef`` is EWGS's delta or the generic mu.

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
    zero_v = zero.detach() if isinstance(zero, Tensor) else float(zero)
    return _FakeQuant.apply(x, lo, hi, step, coef_t, zero_v, levels, backward, range_rule)

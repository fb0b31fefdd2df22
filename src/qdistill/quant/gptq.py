"""GPTQ rounding of a quantized Linear's weight (Frantar, Ashkboos, Hoefler, Alistarh, ICLR 2023).

Round-to-nearest rounds every weight on its own; GPTQ rounds the input columns of ``W`` one at a
time and moves the columns not yet rounded to cancel the error on the layer's output ``X W^T``,
the least-squares update under the proxy Hessian ``H = X^T X`` of the layer's inputs: with ``U``
the upper Cholesky factor of ``H^-1``, rounding column ``i`` to ``q`` adds
``-(w_i - q) / U_ii * U_i,j`` to every later column ``j``. Columns are taken in their natural order,
in batches of `BLOCK` whose updates to the rest are applied at once (the paper's lazy batch
update). Weights land on the layer's own grid (its quantizer's step and zero point per channel or
group, left as they are), so the quantizer reproduces them exactly and QAT starts from there.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from qdistill.errors import ConfigError
from qdistill.quant.fake_quant import quant_level
from qdistill.quant.modules import QuantModule

__all__ = ["BLOCK", "gptq_block_", "gptq_layers", "gptq_round_", "input_hessians"]

BLOCK = 128


def _column_grids(layer: QuantModule, w: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    """``(lo, hi, step, zero)`` of the weight's ranges as ``(out, groups)`` tensors, and the group width."""
    q = layer.weight_quant
    view = layer.weight_view(w)
    iv = q.interval(view)
    if iv.x is not view:
        raise ConfigError(f"GPTQ rounds the weight itself; {type(q).__name__} quantizes a transform of it")
    out, cols = w.shape
    width = layer.group_size or cols
    rows = torch.zeros(view.shape[0], 1, dtype=w.dtype, device=w.device)
    grid = [
        (torch.as_tensor(t, dtype=w.dtype, device=w.device) + rows).reshape(out, cols // width)
        for t in (iv.lo, iv.hi, iv.step, iv.zero)
    ]
    return *grid, width


@torch.no_grad()
def gptq_round_(layer: QuantModule, hessian: Tensor, damp: float = 0.01) -> float:
    """Round ``layer``'s weight in place by GPTQ under ``hessian`` (``X^T X`` of its inputs, any scale).

    ``damp`` times the mean diagonal is added to the diagonal (the paper's dampening); an input that
    never fired (zero diagonal) gets weight 0. Returns the proxy loss ``tr((W - Q) H (W - Q)^T)``
    relative to round-to-nearest's on the same grid (below 1: GPTQ did better).
    """
    if not layer.features_last:
        raise ConfigError(f"GPTQ rounds Linear weights (features last), not {type(layer).__name__}")
    w0 = layer.oriented_weight()
    cols = w0.shape[1]
    if hessian.shape != (cols, cols):
        raise ConfigError(f"GPTQ: Hessian {tuple(hessian.shape)} does not match {cols} weight inputs")
    orig = w0.detach().double()
    rtn = layer.quant_weight().detach().double()  # the layer's own round-to-nearest, for the ratio
    w = orig.clone()
    lo, hi, step, zero, width = _column_grids(layer, w0.detach().float())
    lo, hi, step, zero = (t.double() for t in (lo, hi, step, zero))
    n = layer.weight_quant.n

    def rounded(col: Tensor, i: int) -> Tensor:
        g = i // width
        return (quant_level(col, lo[:, g], hi[:, g], n) - zero[:, g]) * step[:, g]

    h = hessian.double().clone()
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h.diagonal().add_(damp * h.diagonal().mean())
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    for start in range(0, cols, BLOCK):
        end = min(start + BLOCK, cols)
        err = torch.zeros(w.shape[0], end - start, dtype=w.dtype, device=w.device)
        for i in range(start, end):
            q = rounded(w[:, i], i)
            err[:, i - start] = (w[:, i] - q) / u[i, i]
            w[:, i + 1 : end] -= err[:, i - start, None] * u[i, i + 1 : end]
            w[:, i] = q
        w[:, end:] -= err @ u[start:end, end:]
    w0.copy_(w.to(w0.dtype))
    h0 = hessian.double()

    def proxy(d: Tensor) -> float:
        return float(torch.einsum("oi,ij,oj->", d, h0, d))

    return proxy(orig - w) / max(proxy(orig - rtn), 1e-300)


def gptq_layers(block: nn.Module) -> list[str]:
    """Names of the layers of ``block`` that GPTQ rounds: its quantized Linears."""
    return [name for name, m in block.named_modules() if isinstance(m, QuantModule) and m.features_last]


@contextmanager
def input_hessians(module: nn.Module, names: list[str]) -> Iterator[dict[str, Tensor]]:
    """While open, sums ``X^T X`` (float64) of the inputs of ``module``'s submodules ``names`` into the
    dict it yields (a layer that never ran has no entry)."""
    hessians: dict[str, Tensor] = {}

    def hook(name: str):
        def accumulate(_: nn.Module, args: tuple[Tensor, ...]) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            hessians[name] = hessians[name] + x.T @ x if name in hessians else x.T @ x

        return accumulate

    handles = [module.get_submodule(name).register_forward_pre_hook(hook(name)) for name in names]
    try:
        yield hessians
    finally:
        for h in handles:
            h.remove()


def gptq_block_(block: nn.Module, hessians: dict[str, Tensor], damp: float = 0.01) -> float:
    """GPTQ-round the layers of ``block`` named in ``hessians``; the mean of their `gptq_round_` ratios."""
    ratios = [gptq_round_(block.get_submodule(name), h, damp) for name, h in hessians.items()]
    return sum(ratios) / len(ratios) if ratios else 1.0

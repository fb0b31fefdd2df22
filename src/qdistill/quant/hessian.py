"""EWGS's delta from a Hessian-trace estimate (Lee et al., CVPR 2021, section 3.3).

For each quantizer, delta = (Tr(H) / N) / (3 * std(g)) where H is the Hessian of the training
loss with respect to the quantizer's normalised output x_q (levels k / (L - 1), as in EWGS; our
quantizers output a * x_q + b, and the estimate is converted accordingly), N its number of elements and g the loss gradient
there; Tr(H) is estimated with Hutchinson's Rademacher probes (E[v^T H v] = Tr H). One probe
draws an independent v_i for every quantizer and takes a single Hessian-vector product of the
whole network: since the v_i are independent with zero mean, E[v_i^T (H v)_i] = Tr(H_ii), so every
quantizer's trace comes out of one backward pass instead of one pass each. The reference
code defines this update but never calls it, so its "EWGS" runs as STE; here the trainer's
`EWGSDeltaUpdate` callback (quant/callbacks.py) calls it every N epochs with whatever loss the run
trains on (the label-free KD loss in label-free runs).

Data parallel (a torch.distributed process group, each rank holding its contiguous shard of the
global batch): the estimate is that of the global batch, as one process would compute it. An
activation's elements are split over the ranks, so traces, element counts and the gradient's
sums and squares add up (each rank's probe is its rows of one global draw; a rank's loss, the
mean over its shard, is world size times its share of the global mean, so its gradient and
trace are divided by the world size first); a weight is shared, so its Hessian-vector product
and gradient are averaged over the ranks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import Tensor, nn

from qdistill.quant.api import named_quantizers

__all__ = ["preserved_buffers", "update_ewgs_delta"]


@contextmanager
def preserved_buffers(*modules: nn.Module):
    """Restore every buffer (BatchNorm statistics, queues, counters) of ``modules`` on exit.

    The estimate's extra training-mode forwards must leave no trace: not in the student's
    BatchNorm, nor in an objective's own modules (regressors' BatchNorm, contrastive queues).
    """
    saved = [(m, name, b.detach().clone()) for m in modules for name, b in m.named_buffers()]
    try:
        yield
    finally:
        for m, name, value in saved:  # assign rather than copy: a forward may have replaced a buffer
            owner, _, leaf = name.rpartition(".")
            setattr(m.get_submodule(owner), leaf, value)


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _probe(y: Tensor, shared: bool, generator: torch.Generator | None, rank: int, world: int) -> Tensor:
    """A Rademacher probe for ``y``: for a batch shard, this rank's rows of one global-batch draw."""
    if shared or world == 1:
        return torch.randint(0, 2, y.shape, generator=generator).to(y) * 2 - 1
    n = y.shape[0]
    v = torch.randint(0, 2, (world * n, *y.shape[1:]), generator=generator)[rank * n : (rank + 1) * n]
    return v.to(y) * 2 - 1


def _ratios(qs: list, traces: list[float], grads: list[Tensor], probes: int, world: int) -> list[float]:
    """Per quantizer ``(Tr H / N) / (3 std g)`` of the global batch, from this rank's part of it."""
    stats = []  # activations: trace, elements, sum g, sum g^2; weights: trace
    for (_, q), tr, g in zip(qs, traces, grads):
        g = g.detach().double()
        if q.is_weight:
            stats.append(tr)
        else:  # per the global mean loss (see the module docstring); else only the 1e-12 below would differ
            g = g / world
            stats += [tr / world, g.numel(), float(g.sum()), float(g.square().sum())]
    stats_t = torch.tensor(stats, dtype=torch.float64)
    shared = [g.detach().double().flatten() for (_, q), g in zip(qs, grads) if q.is_weight]
    shared_t = torch.cat(shared) if shared else torch.zeros(0, dtype=torch.float64)
    if world > 1:
        for t in (stats_t, shared_t):
            dist.all_reduce(t)
        shared_t /= world
    ratios, i, j = [], 0, 0
    for (_, q), g in zip(qs, grads):
        if q.is_weight:
            tr, n, std = float(stats_t[i]) / world, g.numel(), float(shared_t[j : j + g.numel()].std())
            i, j = i + 1, j + g.numel()
        else:
            tr, n, s1, s2 = stats_t[i : i + 4].tolist()
            std = max((s2 - s1 * s1 / n) / max(n - 1.0, 1.0), 0.0) ** 0.5
            i += 4
        ratios.append((tr / probes / n) / (3.0 * std + 1e-12))
    return ratios


def update_ewgs_delta(
    model: nn.Module,
    batches: Iterable,
    loss_fn: Callable[[object], Tensor],
    probes: int = 4,
    generator: torch.Generator | None = None,
    preserve: Iterable[nn.Module] = (),
) -> dict[str, float]:
    """Set every EWGS-backward quantizer's delta from the loss on ``batches``; return the deltas.

    ``loss_fn(batch)`` must run the model forward and return the scalar training loss. The buffers
    of ``model`` and of the modules in ``preserve`` (e.g. the objective whose loss this is) are
    restored after the forwards, so the estimate changes nothing but the deltas. In a process
    group every rank must call it with its shard of the same batches and the same ``generator``.
    """
    qs = [(n, q) for n, q in named_quantizers(model) if q.backward_mode == "ewgs"]
    if not qs:
        return {}
    rank, world = _rank_world()
    sums = {n: 0.0 for n, _ in qs}
    count = 0
    for _, q in qs:
        q.capture = True
    try:
        with preserved_buffers(model, *preserve):
            for batch in batches:
                loss = loss_fn(batch)
                outs = [q.captured for _, q in qs]
                if any(o is None for o in outs):
                    raise RuntimeError("a quantizer was not used in the forward pass; cannot estimate its Hessian")
                grads = torch.autograd.grad(loss, outs, create_graph=True)
                traces = [0.0] * len(outs)
                for _ in range(probes):
                    vs = [_probe(y, q.is_weight, generator, rank, world) for (_, q), y in zip(qs, outs)]
                    hvs = torch.autograd.grad(grads, outs, vs, retain_graph=True, allow_unused=True)
                    for i, (hv, v) in enumerate(zip(hvs, vs)):
                        traces[i] += 0.0 if hv is None else float((hv * v).sum())
                for (name, q), ratio in zip(qs, _ratios(qs, traces, list(grads), probes, world)):
                    # EWGS defines delta on the normalised grid x_q; y = a * x_q + b scales the trace by
                    # a^2 and the gradient std by a, so the same delta is a * (value-domain ratio).
                    sums[name] += q.captured_scale * ratio
                count += 1
                del loss, grads, outs
    finally:
        for _, q in qs:
            q.capture, q.captured = False, None
    if count == 0:
        raise ValueError("update_ewgs_delta needs at least one batch")
    deltas = {}
    for name, q in qs:
        # keep 1 + delta * sign(g) * (x_c - x_q) > 0 (|x_c - x_q| <= 1 / (2 (levels - 1))): an estimate from a
        # near-zero gradient std (e.g. 1-bit layers) otherwise gives delta ~ 1e15 and NaN in one step
        deltas[name] = min(max(sums[name] / count, 0.0), float(q.levels - 1))
        q.coef.fill_(deltas[name])
    model.zero_grad(set_to_none=True)
    return deltas

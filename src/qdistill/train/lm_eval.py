"""Language-model evaluation: sliding-window perplexity, and agreement and KL with the teacher.

The held-out text is one token stream. Tokens ``1 .. N-1`` are each predicted exactly once, in
chunks of ``stride`` targets; the window of a chunk is the ``context`` tokens that end at it, so
every target sees at least ``context - stride`` earlier tokens (all of them near the start).
Perplexity is ``exp`` of the mean negative log-likelihood over those targets.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qdistill.batch import logits_of
from qdistill.errors import ConfigError, DataError

__all__ = ["block_metrics", "lm_metrics", "windows"]


def windows(n: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """``(window_start, first_target, end)`` triples covering targets ``1 .. n-1`` once each."""
    if not 1 <= stride < context:
        raise ConfigError(f"eval.stride must be in [1, context) = [1, {context}), got {stride}")
    if n < 2:
        raise DataError(f"the held-out text has {n} tokens: perplexity needs at least 2")
    return [(max(0, min(s + stride, n) - context), s, min(s + stride, n)) for s in range(1, n, stride)]


def _log_probs(model: nn.Module, ids: Tensor) -> Tensor:
    return F.log_softmax(logits_of(model(input_ids=ids)).float(), dim=-1)


def _add_kl_agreement(kl: float, agree: int, log_p: Tensor, log_t: Tensor) -> tuple[float, int]:
    """Running sums of ``KL(teacher || model)`` and of matching top-1 tokens over the rows of two log-softmaxes."""
    kl += float(F.kl_div(log_p, log_t, reduction="sum", log_target=True))
    return kl, agree + int((log_p.argmax(-1) == log_t.argmax(-1)).sum())


@torch.no_grad()
def lm_metrics(
    model: nn.Module,
    ids: Tensor,
    context: int,
    stride: int | None = None,
    teacher: nn.Module | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Perplexity of ``model`` on the 1-D token stream ``ids``; with ``teacher`` also the teacher's
    perplexity, top-1 agreement (percent of targets where both predict the same token) and
    ``KL(teacher || model)`` per token, from the same windows.
    """
    stride = stride or context // 2
    ids = ids.reshape(-1).to(device)
    was = model.training
    model.eval()
    nll = t_nll = kl = 0.0
    agree = count = 0
    try:
        for start, first, end in windows(len(ids), context, stride):
            window = ids[start:end][None]
            targets = ids[first:end]
            rows = slice(first - 1 - start, end - 1 - start)  # logits at position p predict token p + 1
            log_p = _log_probs(model, window)[0, rows]
            nll -= float(log_p.gather(1, targets[:, None]).sum())
            count += len(targets)
            if teacher is not None:
                log_t = _log_probs(teacher, window)[0, rows]
                t_nll -= float(log_t.gather(1, targets[:, None]).sum())
                kl, agree = _add_kl_agreement(kl, agree, log_p, log_t)
    finally:
        model.train(was)
    out = {
        "ppl": math.exp(nll / count),
        "eval_tokens": float(count),
        "context": float(context),
        "stride": float(stride),
    }
    if teacher is not None:
        out.update(teacher_ppl=math.exp(t_nll / count), agreement=100.0 * agree / count, kl=kl / count)
    return out


@torch.no_grad()
def block_metrics(
    model: nn.Module, teacher: nn.Module, blocks: Tensor, batch_size: int, device: str | torch.device = "cpu"
) -> dict[str, float]:
    """Top-1 agreement (percent) and ``KL(teacher || model)`` per token at every position of independent
    token blocks ``[N, T]`` (e.g. sequences sampled from the teacher: no stream to slide a window over,
    and no real text whose perplexity would mean anything)."""
    was = model.training
    model.eval()
    kl, agree = 0.0, 0
    try:
        for batch in blocks.to(device).split(batch_size):
            log_p, log_t = _log_probs(model, batch), _log_probs(teacher, batch)
            kl, agree = _add_kl_agreement(kl, agree, log_p.flatten(0, 1), log_t.flatten(0, 1))
    finally:
        model.train(was)
    count = blocks.numel()
    return {"agreement": 100.0 * agree / count, "kl": kl / count, "eval_tokens": float(count)}

"""Logit losses over the last dimension: ``[batch, classes]`` or ``[batch, tokens, vocab]`` logits.

Both take an optional ``mask`` of the logits' leading shape (a transformers ``attention_mask``):
masked positions are dropped *before* the softmax, so padding never enters the value or the
gradient, and the loss is the mean over the positions that remain.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from qdistill.batch import logits_of
from qdistill.errors import DataError

__all__ = ["ce_loss", "kd_loss", "positions", "upcast"]


def positions(logits: Tensor, mask: Tensor | None) -> Tensor:
    """``logits`` as ``[positions, classes]``: every leading index, or only those where ``mask`` is set."""
    if mask is None:
        return logits.reshape(-1, logits.shape[-1])
    if tuple(mask.shape) != tuple(logits.shape[:-1]):
        raise DataError(f"mask of shape {tuple(mask.shape)} does not fit logits of shape {tuple(logits.shape)}")
    return logits[mask.bool()]


def upcast(x: Tensor) -> Tensor:
    """``x`` in at least float32: losses of half-precision tensors are computed in fp32, a float64 run
    (gradient checks, the DDP equivalence benchmark) stays float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def kd_loss(student_logits: Any, teacher_logits: Any, temperature: float = 4.0, mask: Tensor | None = None) -> Tensor:
    """``KL(softmax(z_T/T) || softmax(z_S/T)) * T^2`` per position, averaged (Hinton et al. 2015).

    The softmax is over the last dimension; on ``[B, C]`` the mean over positions is PyTorch's
    ``batchmean``. Outputs may be tensors, ``ModelOutput``s or dicts with ``logits``. The T^2
    factor keeps gradient magnitudes comparable across temperatures. This is the whole SQAKD
    objective: no labels and no loss weights.

    Example (teacher p = [3/4, 1/4], student [1/2, 1/2]: 3/4 ln(3/2) + 1/4 ln(1/2)):
        >>> import math, torch
        >>> round(float(kd_loss(torch.zeros(1, 2), torch.tensor([[math.log(3.0), 0.0]]), 1.0)), 4)
        0.1308
    """
    s, t = logits_of(student_logits), logits_of(teacher_logits)
    if s.shape != t.shape:
        raise DataError(f"student logits {tuple(s.shape)} and teacher logits {tuple(t.shape)} differ in shape")
    temp = float(temperature)
    log_p_s = F.log_softmax(upcast(positions(s, mask)) / temp, dim=-1)
    log_p_t = F.log_softmax(upcast(positions(t, mask)) / temp, dim=-1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (temp * temp)


def ce_loss(logits: Any, labels: Tensor, mask: Tensor | None = None) -> Tensor:
    """Cross-entropy over the last dimension, averaged over (unmasked) positions; label -100 is ignored."""
    z = logits_of(logits)
    if tuple(labels.shape) != tuple(z.shape[:-1]):
        raise DataError(f"labels of shape {tuple(labels.shape)} do not fit logits of shape {tuple(z.shape)}")
    flat = labels if mask is None else labels[mask.bool()]
    return F.cross_entropy(upcast(positions(z, mask)), flat.reshape(-1).long())

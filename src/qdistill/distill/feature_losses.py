"""Distances between a student feature and a (detached) target feature: ``(student, target) -> Tensor``.

All of them average over the batch so their scale does not depend on the batch size. They are
registered by name so objectives can take ``distance: l1`` from a config.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from qdistill.distill.kd import upcast
from qdistill.registry import Registry

__all__ = ["FEATURE_DISTANCES", "cosine_distance", "histogram_kl", "match_spatial", "soft_histogram"]

FEATURE_DISTANCES: Registry[Callable[[Tensor, Tensor], Tensor]] = Registry("feature distance")
FEATURE_DISTANCES.register("mse")(F.mse_loss)
FEATURE_DISTANCES.register("l1")(F.l1_loss)


@FEATURE_DISTANCES.register("cosine")
def cosine_distance(student: Tensor, target: Tensor) -> Tensor:
    """``1 - cos(f_S, f_T)`` per sample (features flattened), averaged: ignores the overall scale."""
    return (1 - F.cosine_similarity(student.flatten(1), target.flatten(1), dim=1, eps=1e-8)).mean()


def soft_histogram(x: Tensor, lo: Tensor, hi: Tensor, bins: int) -> Tensor:
    """Normalised histogram of the values of ``x`` on ``bins`` centres spanning [lo, hi].

    Each value is split linearly between its two nearest centres (a triangular kernel), so the
    histogram is differentiable in ``x``; values outside the range fall into the end bins.
    """
    width = (hi - lo).clamp_min(1e-8) / (bins - 1)
    pos = ((upcast(x.flatten()) - lo) / width).clamp(0, bins - 1)
    left = pos.floor().clamp(max=bins - 2)
    frac = pos - left
    hist = torch.zeros(bins, dtype=pos.dtype, device=x.device)
    hist = hist.index_add(0, left.long(), 1 - frac).index_add(0, left.long() + 1, frac)
    return hist / hist.sum()


@FEATURE_DISTANCES.register("kl_hist")
def histogram_kl(student: Tensor, target: Tensor, bins: int = 32) -> Tensor:
    """``KL(h_T || h_S)`` between value histograms on the target's range.

    Compares value distributions rather than positions: useful when the student should use its
    quantization levels as often as the teacher's projected feature does.
    """
    t = upcast(target.detach())
    lo, hi = t.min(), t.max()
    h_t = soft_histogram(t, lo, hi, bins)
    h_s = soft_histogram(student, lo, hi, bins)
    eps = 1e-6
    return (h_t * ((h_t + eps).log() - (h_s + eps).log())).sum()


def match_spatial(feature: Tensor, like: Tensor) -> Tensor:
    """Average-pool (or repeat) a 4-D ``feature`` to the spatial size of ``like``; others pass through."""
    if feature.dim() == 4 and like.dim() == 4 and feature.shape[2:] != like.shape[2:]:
        return F.adaptive_avg_pool2d(feature, like.shape[2:])
    return feature

"""Baselines that transfer relations between the samples of a batch: RKD and CC."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qdistill.distill.baselines.base import FeatureBaseline
from qdistill.distill.objectives import OBJECTIVES

__all__ = ["CC", "RKD", "rkd_angles", "rkd_distances"]


def _smooth_norm(x: Tensor) -> Tensor:
    """``sqrt(|x|^2 + eps)``: twice differentiable at 0 (the i = j pairs), which EWGS's Hessian needs."""
    return (x.pow(2).sum(-1, keepdim=True) + 1e-12).sqrt()


def rkd_distances(e: Tensor) -> Tensor:
    """Pairwise Euclidean distances normalised by their mean over distinct pairs (RKD's psi_D)."""
    d = _smooth_norm(e.unsqueeze(0) - e.unsqueeze(1)).squeeze(-1)
    off = ~torch.eye(len(e), dtype=torch.bool, device=e.device)
    return d[off] / d[off].mean().clamp_min(1e-12)


def rkd_angles(e: Tensor) -> Tensor:
    """Cosines of the angles ``e_i e_j e_k`` for all triplets (RKD's psi_A)."""
    diff = e.unsqueeze(0) - e.unsqueeze(1)
    u = diff / _smooth_norm(diff)
    return torch.bmm(u, u.transpose(1, 2)).flatten()


@OBJECTIVES.register("rkd")
class RKD(FeatureBaseline):
    """Relational KD (Park et al., CVPR 2019) on the penultimate embedding: Huber losses between
    distance-wise and angle-wise relations, ``dist_weight * L_D + angle_weight * L_A`` (25 and 50)."""

    tap_rules = ("penultimate",)
    default_weight = 1.0

    def __init__(self, student: nn.Module, teacher: nn.Module | None, dist_weight: float = 25.0,
                 angle_weight: float = 50.0, **common) -> None:  # fmt: skip
        super().__init__(student, teacher, **common)
        self.dist_weight, self.angle_weight = dist_weight, angle_weight

    def distill(self, s: list[Tensor], t: list[Tensor]) -> Tensor:
        loss = s[0].new_zeros(())
        for fs, ft in zip(s, t):
            fs, ft = fs.flatten(1), ft.flatten(1)
            loss = loss + self.dist_weight * F.smooth_l1_loss(rkd_distances(fs), rkd_distances(ft))
            loss = loss + self.angle_weight * F.smooth_l1_loss(rkd_angles(fs), rkd_angles(ft))
        return loss / len(s)


def rbf_correlation(f: Tensor, gamma: float, order: int) -> Tensor:
    """Batch correlation matrix with a Gaussian RBF kernel, by its order-P Taylor expansion.

    For L2-normalised embeddings ``exp(-gamma ||x - y||^2) = exp(-2 gamma) exp(2 gamma x.y)``, and
    the second exponential is expanded to ``sum_p (2 gamma x.y)^p / p!`` (CC's approximation).
    """
    e = F.normalize(f.flatten(1), dim=1)
    dot = e @ e.t()
    series = sum((2 * gamma * dot).pow(p) / math.factorial(p) for p in range(order + 1))
    return math.exp(-2 * gamma) * series


@OBJECTIVES.register("cc")
class CC(FeatureBaseline):
    """Correlation congruence (Peng et al., ICCV 2019): match the batch correlation matrices of the
    penultimate embeddings, ``||C_T - C_S||^2 / n^2``. The matrices are n x n whatever the widths,
    so no embedding layer is needed to compare different architectures."""

    tap_rules = ("penultimate",)
    default_weight = 0.02

    def __init__(self, student: nn.Module, teacher: nn.Module | None, gamma: float = 0.4, order: int = 2,
                 **common) -> None:  # fmt: skip
        super().__init__(student, teacher, **common)
        self.gamma, self.order = gamma, order

    def distill(self, s: list[Tensor], t: list[Tensor]) -> Tensor:
        diffs = [rbf_correlation(fs, self.gamma, self.order) - rbf_correlation(ft, self.gamma, self.order)
                 for fs, ft in zip(s, t)]  # fmt: skip
        return torch.stack([d.pow(2).mean() for d in diffs]).mean()

"""Baselines that transfer relations between the samples of a batch: RKD and CC (reference forms)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qdistill.distill.baselines.base import FeatureBaseline
from qdistill.distill.baselines.maps import stage_sum
from qdistill.distill.objectives import OBJECTIVES

__all__ = ["CC", "RKD", "correlation_loss", "rkd_angles", "rkd_distances"]


def _smooth_norm(x: Tensor) -> Tensor:
    """``sqrt(|x|^2 + eps)``: twice differentiable at 0 (the i = j pairs), which EWGS's Hessian needs."""
    return (x.pow(2).sum(-1, keepdim=True) + 1e-12).sqrt()


def rkd_distances(e: Tensor) -> Tensor:
    """Pairwise Euclidean distances, zero on the diagonal, divided by their mean over distinct pairs (psi_D)."""
    off = ~torch.eye(len(e), dtype=torch.bool, device=e.device)
    d = _smooth_norm(e.unsqueeze(0) - e.unsqueeze(1)).squeeze(-1) * off
    return d / d[off].mean().clamp_min(1e-12)


def rkd_angles(e: Tensor) -> Tensor:
    """Cosines of the angles ``e_i e_j e_k`` for all triplets (RKD's psi_A); 0 where two points coincide."""
    diff = e.unsqueeze(0) - e.unsqueeze(1)
    u = diff / _smooth_norm(diff)
    return torch.bmm(u, u.transpose(1, 2)).flatten()


@OBJECTIVES.register("rkd")
class RKD(FeatureBaseline):
    """Relational KD (Park et al., CVPR 2019) on the penultimate embedding: Huber losses between
    distance-wise and angle-wise relations, ``dist_weight * L_D + angle_weight * L_A`` (25 and 50),
    each averaged over all ``b^2`` pairs / ``b^3`` triplets (diagonal included) as in the reference."""

    tap_rules = ("penultimate",)
    default_weight = 1.0

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        dist_weight: float = 25.0,
        angle_weight: float = 50.0,
        **common,
    ) -> None:
        super().__init__(student, teacher, **common)
        self.dist_weight, self.angle_weight = dist_weight, angle_weight

    def distill(self, s: list[Tensor], t: list[Tensor]) -> Tensor:
        losses = []
        for fs, ft in zip(s, t):
            fs, ft = fs.flatten(1), ft.flatten(1)
            losses.append(
                self.dist_weight * F.smooth_l1_loss(rkd_distances(fs), rkd_distances(ft))
                + self.angle_weight * F.smooth_l1_loss(rkd_angles(fs), rkd_angles(ft))
            )
        return stage_sum(losses)


def correlation_loss(e_s: Tensor, e_t: Tensor) -> Tensor:
    """The reference's correlation congruence: ``mean_i sum_d |e_S - e_T|_{i,d} |e_S - e_T|_{i+1,d}``.

    It correlates the embedding errors of consecutive samples of the batch (a cheap stand-in for the
    CC paper's kernel correlation matrices, written by the CC authors for the CRD code base).
    """
    delta = (e_s - e_t).abs()
    return (delta[:-1] * delta[1:]).sum(1).mean()


@OBJECTIVES.register("cc")
class CC(FeatureBaseline):
    """Correlation congruence (Peng et al., ICCV 2019) in the reference's form, at its lambda 0.02.

    Both penultimate embeddings go through a learned linear map to ``feat_dim`` (128) dimensions
    (no normalisation); the loss is `correlation_loss` of the two. The CC paper's Gaussian-kernel
    form is not used: 0.02 is tuned for this one.
    """

    tap_rules = ("penultimate",)
    default_weight = 0.02

    def __init__(self, student: nn.Module, teacher: nn.Module | None, feat_dim: int = 128, **common) -> None:
        super().__init__(student, teacher, **common)
        self.embed_s = nn.ModuleList(nn.Linear(math.prod(s[1:]), feat_dim) for s in self.s_shapes)
        self.embed_t = nn.ModuleList(nn.Linear(math.prod(t[1:]), feat_dim) for t in self.t_shapes)

    def distill(self, s: list[Tensor], t: list[Tensor]) -> Tensor:
        return stage_sum(
            [
                correlation_loss(es(fs.flatten(1)), et(ft.flatten(1)))
                for es, et, fs, ft in zip(self.embed_s, self.embed_t, s, t)
            ]
        )

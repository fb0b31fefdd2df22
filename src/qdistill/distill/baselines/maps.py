"""Baselines that compare parameter-free summaries of feature maps: AT, NST, FSP, SP.

As in the reference implementations the SQAKD paper ran (the CRD code base), a method that reads
several stages *sums* its per-stage losses: the published lambdas are tuned for the sum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qdistill.distill.baselines.base import FeatureBaseline, TwoStageBaseline
from qdistill.distill.feature_losses import match_spatial
from qdistill.distill.objectives import OBJECTIVES
from qdistill.errors import ConfigError

__all__ = ["AT", "FSP", "NST", "SP", "attention_map", "fsp_matrix", "stage_sum"]


def stage_sum(losses: list[Tensor]) -> Tensor:
    """Sum of per-stage losses (the reference's reduction over stages)."""
    return torch.stack(losses).sum()


def attention_map(f: Tensor) -> Tensor:
    """``sum_c |A_c|^2`` (as a channel mean), flattened and L2-normalised per sample."""
    return F.normalize(f.pow(2).mean(1).flatten(1), dim=1)


@OBJECTIVES.register("at")
class AT(FeatureBaseline):
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017): match normalised spatial attention
    maps, ``sum_stages mean((Q_S/||Q_S|| - Q_T/||Q_T||)^2)`` (p = 2)."""

    tap_rules = ("stages",)
    default_weight = 1000.0

    def distill(self, s: list[Tensor], t: list[Tensor]) -> Tensor:
        return stage_sum(
            [(attention_map(fs) - attention_map(match_spatial(ft, fs))).pow(2).mean() for fs, ft in zip(s, t)]
        )


def _channel_mmd2(s: Tensor, t: Tensor) -> Tensor:
    """Squared MMD between the channel "neurons" of two maps, polynomial kernel ``(x.y)^2``."""
    s = F.normalize(s.flatten(2), dim=2)
    t = F.normalize(t.flatten(2), dim=2)

    def k(a, b):
        return torch.bmm(a, b.transpose(1, 2)).pow(2).mean()

    return k(s, s) + k(t, t) - 2 * k(s, t)


@OBJECTIVES.register("nst")
class NST(FeatureBaseline):
    """Neuron selectivity transfer (Huang & Wang, 2017): match the distributions of per-channel
    activation patterns (each channel an L2-normalised vector over positions) by the squared MMD
    with a degree-2 polynomial kernel, summed over the stages."""

    tap_rules = ("stages",)
    default_weight = 50.0

    def distill(self, s: list[Tensor], t: list[Tensor]) -> Tensor:
        return stage_sum([_channel_mmd2(fs, match_spatial(ft, fs)) for fs, ft in zip(s, t)])


def fsp_matrix(a: Tensor, b: Tensor) -> Tensor:
    """``G_ij = sum_hw a_i b_j / (h w)`` after pooling the larger map to the smaller's size."""
    if a.shape[2:] != b.shape[2:]:
        size = min(a.shape[2], b.shape[2]), min(a.shape[3], b.shape[3])
        a, b = F.adaptive_avg_pool2d(a, size), F.adaptive_avg_pool2d(b, size)
    return torch.bmm(a.flatten(2), b.flatten(2).transpose(1, 2)) / (a.shape[2] * a.shape[3])


@OBJECTIVES.register("fsp")
class FSP(TwoStageBaseline):
    """Flow of solution procedure (Yim et al., CVPR 2017), two-stage as in the paper and the reference.

    Stage 1 (``init_steps``): the student alone matches the teacher's FSP (Gram) matrices between
    consecutive stages, ``sum_pairs mean((G_S - G_T)^2)``, no cross-entropy. Stage 2: cross-entropy,
    plus ``weight`` times the same term; the default weight 0 is the reference's CE-only second stage
    (the SQAKD paper's lambda 50 multiplies a term its code sets to zero). Consecutive stages differ
    in resolution; the larger map is average-pooled to the smaller one. Student and teacher stages
    need equal widths.
    """

    tap_rules = ("stages",)
    default_weight = 0.0

    def __init__(self, student: nn.Module, teacher: nn.Module | None, **common) -> None:
        super().__init__(student, teacher, **common)
        if len(self.s_shapes) < 2:
            raise ConfigError("fsp needs at least two feature taps (stages) to form a flow matrix")
        if [s[1] for s in self.s_shapes] != [t[1] for t in self.t_shapes]:
            raise ConfigError("fsp needs student and teacher features with equal channel counts at every tap")

    def distill(self, s: list[Tensor], t: list[Tensor]) -> Tensor:
        pairs = range(len(s) - 1)
        return stage_sum([(fsp_matrix(s[i], s[i + 1]) - fsp_matrix(t[i], t[i + 1])).pow(2).mean() for i in pairs])

    init_loss = distill


def _similarity(f: Tensor) -> Tensor:
    a = f.flatten(1)
    return F.normalize(a @ a.t(), dim=1)


@OBJECTIVES.register("sp")
class SP(FeatureBaseline):
    """Similarity-preserving KD (Tung & Mori, ICCV 2019): match the row-normalised batch
    similarity matrices ``G = normalize(A A^T)`` of the last stage, ``||G_T - G_S||_F^2 / b^2``."""

    tap_rules = ("last_stage",)
    default_weight = 3000.0

    def distill(self, s: list[Tensor], t: list[Tensor]) -> Tensor:
        return stage_sum([(_similarity(fs) - _similarity(ft)).pow(2).mean() for fs, ft in zip(s, t)])

"""Baselines that regress teacher features through learned modules: FitNet, VID, FT.

Reductions follow the reference implementations the SQAKD paper ran (the CRD code base): VID sums
its per-stage losses; FT pre-trains its paraphraser and then freezes it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qdistill.distill.baselines.base import FeatureBaseline, TwoStageBaseline, conv_bn
from qdistill.distill.baselines.maps import stage_sum
from qdistill.distill.feature_losses import match_spatial
from qdistill.distill.objectives import OBJECTIVES

__all__ = ["VID", "FactorTransfer", "FitNet", "factor", "factor_loss", "vid_nll"]


@OBJECTIVES.register("fitnet")
class FitNet(FeatureBaseline):
    """FitNets (Romero et al., ICLR 2015): ``MSE(r(f_S), f_T)`` at a middle "hint" layer.

    ``r`` is a 1x1 conv + BN + ReLU regressor from the student's width to the teacher's (the hint
    is a post-ReLU stage output, as is the reference's regressor).
    """

    tap_rules = ("hint",)
    default_weight = 100.0

    def __init__(self, student: nn.Module, teacher: nn.Module | None, **common) -> None:
        super().__init__(student, teacher, **common)
        self.regressors = nn.ModuleList(
            nn.Sequential(conv_bn(s[1], t[1]), nn.ReLU()) for s, t in zip(self.s_shapes, self.t_shapes)
        )

    def distill(self, s: list[Tensor], t: list[Tensor]) -> Tensor:
        return stage_sum([F.mse_loss(r(fs), match_spatial(ft, fs)) for r, fs, ft in zip(self.regressors, s, t)])


def _mean_net(in_channels: int, out_channels: int) -> nn.Sequential:
    """VID's mean ``mu(f_S)``: three bias-free 1x1 convs with ReLUs in between."""

    def conv(i: int, o: int) -> nn.Conv2d:
        return nn.Conv2d(i, o, 1, bias=False)

    return nn.Sequential(
        conv(in_channels, out_channels),
        nn.ReLU(),
        conv(out_channels, out_channels),
        nn.ReLU(),
        conv(out_channels, out_channels),
    )


def vid_nll(mu: Tensor, alpha: Tensor, target: Tensor, eps: float = 1e-5) -> Tensor:
    """``mean(0.5 * (log s_c + (t - mu)^2 / s_c))`` with ``s_c = softplus(alpha_c) + eps`` per channel."""
    var = (F.softplus(alpha) + eps).view(1, -1, *[1] * (mu.dim() - 2))
    return (0.5 * (var.log() + (target - mu).pow(2) / var)).mean()


@OBJECTIVES.register("vid")
class VID(FeatureBaseline):
    """Variational information distillation (Ahn et al., CVPR 2019), at every stage.

    Maximises a variational lower bound of the mutual information between teacher and student
    features with a Gaussian ``q(t | s) = N(mu(s), sigma^2)``: ``mu`` is a 1x1-conv net on the
    student feature, ``sigma_c^2 = softplus(alpha_c) + eps`` one learned variance per teacher
    channel. The loss is ``-log q`` per element (constants dropped), averaged per stage and summed
    over the stages.
    """

    tap_rules = ("stages",)
    default_weight = 1.0

    def __init__(self, student: nn.Module, teacher: nn.Module | None, init_var: float = 5.0, **common) -> None:
        super().__init__(student, teacher, **common)
        self.eps = 1e-5
        self.means = nn.ModuleList(_mean_net(s[1], t[1]) for s, t in zip(self.s_shapes, self.t_shapes))
        alpha = math.log(math.expm1(init_var - self.eps))  # softplus^-1: sigma^2 starts at init_var
        self.alphas = nn.ParameterList(nn.Parameter(torch.full((t[1],), alpha)) for t in self.t_shapes)

    def distill(self, s: list[Tensor], t: list[Tensor]) -> Tensor:
        losses = []
        for mu_net, alpha, fs, ft in zip(self.means, self.alphas, s, t):
            mu = mu_net(fs)
            losses.append(vid_nll(mu, alpha, match_spatial(ft, mu), self.eps))
        return stage_sum(losses)


def _factor_net(in_channels: int, out_channels: int, bn: bool) -> nn.Sequential:
    """Three 3x3 convs (``in -> in -> out -> out``), each followed by [BN and] LeakyReLU(0.1)."""
    layers: list[nn.Module] = []
    for i, o in ((in_channels, in_channels), (in_channels, out_channels), (out_channels, out_channels)):
        layers += [nn.Conv2d(i, o, 3, padding=1, bias=not bn), *([nn.BatchNorm2d(o)] if bn else []), nn.LeakyReLU(0.1)]
    return nn.Sequential(*layers)


def factor(f: Tensor) -> Tensor:
    """The reference's factor summary: ``mean_c f_c^2`` per position, flattened, L2-normalised per sample."""
    return F.normalize(f.pow(2).mean(1).flatten(1), dim=1)


def factor_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    """``mean |factor(F_S) - factor(F_T)|`` (p = 1), the larger map pooled to the smaller's size."""
    if f_s.shape[2:] != f_t.shape[2:]:
        size = min(f_s.shape[2], f_t.shape[2]), min(f_s.shape[3], f_t.shape[3])
        f_s, f_t = F.adaptive_avg_pool2d(f_s, size), F.adaptive_avg_pool2d(f_t, size)
    return (factor(f_s) - factor(f_t)).abs().mean()


@OBJECTIVES.register("ft")
class FactorTransfer(TwoStageBaseline):
    """Factor transfer (Kim, Park & Kwak, NeurIPS 2018) on the last stage, two-stage as in the paper.

    Stage 1 (``init_steps``): the paraphraser (conv encoder + decoder, no BN) learns to reconstruct
    the teacher feature, ``MSE(dec(enc(f_T)), f_T)``; the student is not trained. Stage 2: the
    paraphraser is frozen (eval mode, no gradient) and gives the teacher factor ``F_T = enc(f_T)``;
    a translator (3 convs + BN) turns the student feature into ``F_S``; the loss is
    ``CE + weight * factor_loss(F_S, F_T)``. ``rate`` is the paper's factor rate k: factors have
    ``k * C_T`` channels.
    """

    tap_rules = ("last_stage",)
    default_weight = 200.0

    def __init__(self, student: nn.Module, teacher: nn.Module | None, rate: float = 0.5, **common) -> None:
        super().__init__(student, teacher, **common)
        pairs = list(zip(self.s_shapes, self.t_shapes))
        factors = [max(1, int(t[1] * rate)) for _, t in pairs]
        self.encoders = nn.ModuleList(_factor_net(t[1], k, bn=False) for (_, t), k in zip(pairs, factors))
        self.decoders = nn.ModuleList(_factor_net(k, t[1], bn=False) for (_, t), k in zip(pairs, factors))
        self.translators = nn.ModuleList(_factor_net(s[1], k, bn=True) for (s, _), k in zip(pairs, factors))

    def init_loss(self, s: list[Tensor], t: list[Tensor]) -> Tensor:
        return stage_sum([F.mse_loss(dec(enc(ft)), ft) for enc, dec, ft in zip(self.encoders, self.decoders, t)])

    def distill(self, s: list[Tensor], t: list[Tensor]) -> Tensor:
        self.encoders.eval()  # frozen after stage 1, whatever mode the objective is in
        with torch.no_grad():
            codes = [enc(ft) for enc, ft in zip(self.encoders, t)]
        return stage_sum([factor_loss(trans(fs), code) for trans, fs, code in zip(self.translators, s, codes)])

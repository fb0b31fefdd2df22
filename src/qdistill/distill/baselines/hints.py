"""Baselines that regress teacher features through learned modules: FitNet, VID, FT."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qdistill.distill.baselines.base import FeatureBaseline, conv_bn
from qdistill.distill.feature_losses import match_spatial
from qdistill.distill.objectives import OBJECTIVES

__all__ = ["FactorTransfer", "FitNet", "VID"]


def _mean(losses: list[Tensor]) -> Tensor:
    return torch.stack(losses).mean()


@OBJECTIVES.register("fitnet")
class FitNet(FeatureBaseline):
    """FitNets (Romero et al., ICLR 2015): ``MSE(r(f_S), f_T)`` at a middle "hint" layer.

    ``r`` is a 1x1 conv + BN regressor from the student's width to the teacher's.
    """

    tap_rules = ("hint",)
    default_weight = 100.0

    def __init__(self, student: nn.Module, teacher: nn.Module | None, **common) -> None:
        super().__init__(student, teacher, **common)
        self.regressors = nn.ModuleList(conv_bn(s[1], t[1]) for s, t in zip(self.s_shapes, self.t_shapes))

    def distill(self, s: list[Tensor], t: list[Tensor]) -> Tensor:
        return _mean([F.mse_loss(r(fs), match_spatial(ft, fs)) for r, fs, ft in zip(self.regressors, s, t)])


def _mean_net(in_channels: int, out_channels: int) -> nn.Sequential:
    """VID's mean ``mu(f_S)``: three 1x1 convs with ReLUs in between."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1), nn.ReLU(), nn.Conv2d(out_channels, out_channels, 1),
                         nn.ReLU(), nn.Conv2d(out_channels, out_channels, 1))  # fmt: skip


@OBJECTIVES.register("vid")
class VID(FeatureBaseline):
    """Variational information distillation (Ahn et al., CVPR 2019), at every stage.

    Maximises a variational lower bound of the mutual information between teacher and student
    features with a Gaussian ``q(t | s) = N(mu(s), sigma^2)``: ``mu`` is a 1x1-conv net on the
    student feature, ``sigma_c^2 = softplus(alpha_c) + eps`` one learned variance per teacher
    channel. The loss is ``-log q`` per element (constants dropped), averaged.
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
            var = (F.softplus(alpha) + self.eps).view(1, -1, 1, 1)
            losses.append((0.5 * (var.log() + (match_spatial(ft, mu) - mu).pow(2) / var)).mean())
        return _mean(losses)


def _factor_net(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(conv_bn(in_channels, in_channels, 3), nn.LeakyReLU(0.1),
                         conv_bn(in_channels, out_channels, 3), nn.LeakyReLU(0.1))  # fmt: skip


def _factor(x: Tensor) -> Tensor:
    return F.normalize(x.flatten(1), dim=1)


@OBJECTIVES.register("ft")
class FactorTransfer(FeatureBaseline):
    """Factor transfer (Kim, Park & Kwak, NeurIPS 2018) on the last stage.

    A paraphraser (conv encoder + decoder on the teacher feature) extracts teacher factors
    ``F_T = enc(f_T)``; a translator turns the student feature into ``F_S``; the loss is
    ``|F_T / ||F_T|| - F_S / ||F_S|| |_1`` (p = 1). The paper pre-trains the paraphraser by
    reconstruction; here its reconstruction MSE is added to the loss and it trains jointly (the
    factor target is detached, so the student never moves the paraphraser). ``rate`` is the
    paper's factor rate k: factors have ``k * C_T`` channels.
    """

    tap_rules = ("last_stage",)
    default_weight = 200.0

    def __init__(self, student: nn.Module, teacher: nn.Module | None, rate: float = 0.5, **common) -> None:
        super().__init__(student, teacher, **common)
        pairs = list(zip(self.s_shapes, self.t_shapes))
        factors = [max(1, round(t[1] * rate)) for _, t in pairs]
        self.encoders = nn.ModuleList(_factor_net(t[1], k) for (_, t), k in zip(pairs, factors))
        self.decoders = nn.ModuleList(_factor_net(k, t[1]) for (_, t), k in zip(pairs, factors))
        self.translators = nn.ModuleList(_factor_net(s[1], k) for (s, _), k in zip(pairs, factors))

    def distill(self, s: list[Tensor], t: list[Tensor]) -> Tensor:
        losses = []
        for enc, dec, trans, fs, ft in zip(self.encoders, self.decoders, self.translators, s, t):
            code = enc(ft)
            recon = F.mse_loss(dec(code), ft)
            f_t = match_spatial(code.detach(), fs)
            losses.append((_factor(trans(fs)) - _factor(f_t)).abs().mean() + recon)
        return _mean(losses)

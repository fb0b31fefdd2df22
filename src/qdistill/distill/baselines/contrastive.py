"""Contrastive baselines: CRD on the penultimate embedding, CKTF on every stage as well.

CRD (Tian, Krishnan & Isola, ICLR 2020) draws its negatives from a memory bank indexed by
dataset position, which needs the sample index in every batch. Here the negatives are the other
samples of the batch plus a FIFO queue of embeddings from earlier batches (as in MoCo), so any
image loader works; the loss is the InfoNCE form of CRD's objective, in both directions
(student anchor vs teacher keys and teacher anchor vs student keys, like CRD's two banks).
The queues are buffers: they are saved in checkpoints and restored on resume. The temperature
default 0.1 is that of the SQAKD paper's runs (its code's default; the CRD paper uses 0.07).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qdistill.distill.baselines.base import FeatureBaseline
from qdistill.distill.objectives import OBJECTIVES

__all__ = ["CKTF", "CRD", "ContrastiveHead"]


class ContrastiveHead(nn.Module):
    """Linear embeddings of a student and a teacher feature and their two-way InfoNCE loss.

    4-D features are global-average-pooled first. Args: widths of the two features, embedding
    size, queue length (0 keeps only in-batch negatives) and the temperature tau.
    """

    def __init__(self, s_dim: int, t_dim: int, dim: int = 128, queue: int = 4096, tau: float = 0.07) -> None:
        super().__init__()
        self.embed_s, self.embed_t = nn.Linear(s_dim, dim), nn.Linear(t_dim, dim)
        self.tau = tau
        self.register_buffer("queue_s", F.normalize(torch.randn(queue, dim), dim=1))
        self.register_buffer("queue_t", F.normalize(torch.randn(queue, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @staticmethod
    def _vector(f: Tensor) -> Tensor:
        return f.mean(dim=(2, 3)) if f.dim() == 4 else f.flatten(1)

    def _nce(self, anchor: Tensor, keys: Tensor, queue: Tensor) -> Tensor:
        # the queue is updated in place after this step's forward: use a copy in the graph
        logits = torch.cat([anchor @ keys.t(), anchor @ queue.clone().t()], dim=1) / self.tau
        return F.cross_entropy(logits, torch.arange(len(anchor), device=anchor.device))

    @torch.no_grad()
    def _enqueue(self, s: Tensor, t: Tensor) -> None:
        size = len(self.queue_s)
        if size == 0:
            return
        idx = (self.ptr + torch.arange(min(len(s), size), device=s.device)) % size
        self.queue_s[idx], self.queue_t[idx] = s[: len(idx)].detach(), t[: len(idx)].detach()
        self.ptr.copy_((self.ptr + len(idx)) % size)

    def forward(self, f_s: Tensor, f_t: Tensor) -> Tensor:
        s = F.normalize(self.embed_s(self._vector(f_s)), dim=1)
        t = F.normalize(self.embed_t(self._vector(f_t)), dim=1)
        loss = self._nce(s, t, self.queue_t) + self._nce(t, s, self.queue_s)
        if self.training:
            self._enqueue(s, t)
        return loss


class _Contrastive(FeatureBaseline):
    """One `ContrastiveHead` per tap pair; the loss is their sum."""

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        feat_dim: int = 128,
        queue: int = 4096,
        tau: float = 0.1,
        **common,
    ) -> None:
        super().__init__(student, teacher, **common)
        self.heads = nn.ModuleList(
            ContrastiveHead(s[1], t[1], feat_dim, queue, tau) for s, t in zip(self.s_shapes, self.t_shapes)
        )

    def head_losses(self, s: list[Tensor], t: list[Tensor]) -> list[Tensor]:
        return [head(fs, ft) for head, fs, ft in zip(self.heads, s, t)]

    def distill(self, s: list[Tensor], t: list[Tensor]) -> Tensor:
        return torch.stack(self.head_losses(s, t)).sum()


@OBJECTIVES.register("crd")
class CRD(_Contrastive):
    """Contrastive representation distillation (Tian et al., ICLR 2020) on the penultimate
    embedding: the student embedding must pick its own image's teacher embedding out of the
    negatives (and vice versa); queue-based negatives, see the module docstring."""

    tap_rules = ("penultimate",)
    default_weight = 0.8


@OBJECTIVES.register("cktf")
class CKTF(_Contrastive):
    """Contrastive knowledge transfer framework (Zhao, Chen & Zhao, ICASSP 2023): CRD-style
    contrastive objectives on several intermediate representations (every stage, pooled) and the
    penultimate embedding, to transfer the teacher's structural knowledge layer by layer.

    ``distill = CRD(penultimate) + stage_weight * sum_stages CRD(stage)``; with the default
    ``weight`` 1.0 and ``stage_weight`` 0.8 this is the SQAKD code's ``1.0 * L_crd + 0.8 * L_stages``.
    The last tap is the penultimate one (``student_taps``/``teacher_taps`` overrides keep that order).
    """

    tap_rules = ("stages", "penultimate")
    default_weight = 1.0

    def __init__(self, student: nn.Module, teacher: nn.Module | None, stage_weight: float = 0.8, **common) -> None:
        super().__init__(student, teacher, **common)
        self.stage_weight = float(stage_weight)

    def distill(self, s: list[Tensor], t: list[Tensor]) -> Tensor:
        *stages, penultimate = self.head_losses(s, t)
        return penultimate + self.stage_weight * torch.stack(stages).sum() if stages else penultimate

"""An ensemble of frozen teachers (any architectures) that behaves like one teacher.

``TeacherEnsemble(members)(x)`` returns ``T * log(sum_i w_i(x) softmax(z_i / T))``: pseudo-logits
whose softened distribution at temperature ``T`` is exactly the weighted mean of the members'
softened distributions (``softmax(log p) = p`` when ``p`` sums to one). So every logit loss
(``kd_loss`` at the same T), the trainer's teacher-agreement metric and ``argmax`` work unchanged,
and any objective that takes a teacher can take an ensemble.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qdistill.batch import Inputs, call_model, logits_of
from qdistill.distill.kd import upcast
from qdistill.errors import ConfigError

__all__ = ["COMBINE", "TeacherEnsemble", "as_ensemble", "teacher_members"]

COMBINE = ("mean", "weighted", "confidence")


class TeacherEnsemble(nn.Module):
    """Frozen teachers combined in probability space.

    Args:
        members: the teachers; they are frozen (eval mode, no gradients) and stay in eval mode.
        combine: ``mean`` (equal weights), ``weighted`` (fixed ``weights``, normalised) or
            ``confidence`` (per sample, each teacher weighted by its top-1 probability at T=1,
            so a teacher that is unsure of an image counts less for it).
        weights: one non-negative number per member, for ``weighted``.
        temperature: the softening T; use the KD loss's T.
    """

    def __init__(
        self,
        members: Sequence[nn.Module],
        combine: str = "mean",
        weights: Sequence[float] | None = None,
        temperature: float = 4.0,
    ) -> None:
        super().__init__()
        if not members:
            raise ConfigError("a teacher ensemble needs at least one teacher")
        if combine not in COMBINE:
            raise ConfigError(f"ensemble combine: unknown {combine!r}; choose one of {', '.join(COMBINE)}")
        if (combine == "weighted") != (weights is not None):
            raise ConfigError("ensemble: give weights exactly when combine is 'weighted'")
        if weights is not None and (len(weights) != len(members) or min(weights) < 0 or sum(weights) <= 0):
            raise ConfigError(f"ensemble weights: need {len(members)} non-negative numbers with a positive sum")
        self.members = nn.ModuleList(members)
        self.members.eval().requires_grad_(False)
        self.combine, self.temperature = combine, float(temperature)
        w = torch.tensor([float(v) for v in weights]) if weights is not None else torch.ones(len(members))
        self.register_buffer("weights", w / w.sum(), persistent=False)

    def train(self, mode: bool = True) -> TeacherEnsemble:
        super().train(False)  # teachers never switch BatchNorm to training statistics
        return self

    def member_weights(self, logits: Tensor) -> Tensor:
        """Weights ``[num_teachers, *positions, 1]`` summing to one over teachers (broadcastable)."""
        if self.combine == "confidence":
            conf = F.softmax(upcast(logits), dim=-1).amax(dim=-1, keepdim=True)
            return conf / conf.sum(dim=0, keepdim=True)
        return self.weights.view(-1, *[1] * (logits.dim() - 1))

    def forward(self, inputs: Inputs | None = None, **batch: Tensor) -> Tensor:
        """Pseudo-logits of a batch given as one tensor / dict, or as keywords the way `call_model`
        hands a dict batch to a Hugging Face model (``ensemble(input_ids=...)``)."""
        inputs = batch if inputs is None else inputs
        logits = torch.stack([upcast(logits_of(call_model(m, inputs))) for m in self.members])
        probs = F.softmax(logits / self.temperature, dim=-1)
        mixed = (self.member_weights(logits) * probs).sum(dim=0)
        return self.temperature * mixed.clamp_min(1e-12).log()


def teacher_members(teacher: nn.Module) -> list[nn.Module]:
    """The individual teachers behind ``teacher`` (itself, unless it is an ensemble)."""
    return list(teacher.members) if isinstance(teacher, TeacherEnsemble) else [teacher]


def as_ensemble(
    teacher: nn.Module | Sequence[nn.Module],
    combine: str = "mean",
    weights: Sequence[float] | None = None,
    temperature: float = 4.0,
) -> TeacherEnsemble:
    """An ensemble over ``teacher``'s members (or a list of teachers) with these combination settings."""
    members = list(teacher) if isinstance(teacher, (list, tuple)) else teacher_members(teacher)
    return TeacherEnsemble(members, combine, weights, temperature)

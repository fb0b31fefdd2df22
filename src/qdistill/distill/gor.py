"""GoR: two learnable scalars balance two losses whose gradients differ in magnitude.

The GoR paper (Rehman et al., "Punching Above Precision: Small Quantized Model Distillation with
Learnable Regularizer", 2025) describes only "two trainable parameters for dynamic loss
weighting" of a task loss and a KD loss. **The parameterisation below is our reading**, not the
authors' code: homoscedastic-uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018)

    L = exp(-s1) * L1 + exp(-s2) * L2 + s1 + s2,

whose optimum in ``s_i`` is ``log L_i``: each term is divided by its own size, which is exactly a
counter to "heterogeneous gradient magnitudes". Guard: when a term tends to 0 its optimal weight
``1 / L_i`` grows without bound, so each ``s_i = b * tanh(r_i / b)`` stays in ``[-b, b]`` (weights
in ``[e^-b, e^b]``) while keeping a gradient everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from qdistill.batch import Inputs
from qdistill.distill.ensemble import teacher_members
from qdistill.distill.kd import ce_loss, kd_loss, upcast
from qdistill.distill.objectives import OBJECTIVES, Objective, mask_of
from qdistill.distill.squat import StudentAwareFeatureLoss, at_temperature
from qdistill.errors import ConfigError, DataError

__all__ = ["GoR", "LossBalance"]


class LossBalance(nn.Module):
    """``sum_i exp(-s_i) * L_i + s_i`` with learnable, bounded log-variances ``s_i``.

    Example:
        >>> bal = LossBalance(2)
        >>> float(bal([torch.tensor(2.0), torch.tensor(3.0)]).detach())  # s = 0: a plain sum at the start
        5.0
    """

    def __init__(self, terms: int = 2, bound: float = 4.0, lr: float | None = None) -> None:
        super().__init__()
        if bound <= 0:
            raise ConfigError(f"gor bound must be > 0, got {bound}")
        if lr is not None and not lr > 0:
            raise ConfigError(f"gor balance_lr must be > 0, got {lr}")
        self.bound = float(bound)
        self.own_lr = lr  # read by the trainer's param_groups: None trains the scalars like weights
        self.raw = nn.Parameter(torch.zeros(terms))

    @property
    def log_vars(self) -> Tensor:
        return self.bound * torch.tanh(self.raw / self.bound)

    def forward(self, losses: Sequence[Tensor]) -> Tensor:
        if len(losses) != self.raw.numel():
            raise ValueError(f"LossBalance expects {self.raw.numel()} losses, got {len(losses)}")
        s = self.log_vars
        return sum(torch.exp(-s[i]) * upcast(loss) + s[i] for i, loss in enumerate(losses))

    def weights(self) -> list[float]:
        """Current effective weights ``exp(-s_i)``."""
        return torch.exp(-self.log_vars.detach()).tolist()


@OBJECTIVES.register("gor")
class GoR(Objective):
    """`LossBalance` over CE + KD (``uses_labels=True``) or, label-free, KL + SQuaT feature loss.

    The balance scalars train with the student, are saved in checkpoints and are logged every
    epoch (``gor_w_<term>``, ``gor_s_<term>``). Works with a teacher ensemble (one feature term per
    member). The feature parameters (taps, quantizer, distance, adaptor) are those of
    `StudentAwareFeatureLoss` and are used only in the label-free form.

    ``balance_lr`` gives the scalars a learning rate of their own (no weight decay). At a fine-tuning
    lr (1e-5 .. 1e-4) Adam moves each scalar about lr per step, so over a few hundred steps the weights
    stay near 1 and the loss is a plain sum; the optimum ``s_i = log L_i`` may lie several units away.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        uses_labels: bool = False,
        temperature: float = 4.0,
        bound: float = 4.0,
        distance: str = "mse",
        student_tap: str | None = None,
        teacher_tap: str | list[str] | None = None,
        quantizer: str | None = None,
        adaptor: bool = False,
        balance_lr: float | None = None,
    ) -> None:
        super().__init__(student, at_temperature(teacher, temperature) if teacher is not None else None)
        self.uses_labels = bool(uses_labels)  # per instance: the trainer feeds labels only when True
        self.temperature = temperature
        self.terms = ("ce", "kd") if self.uses_labels else ("kd", "feat")
        self.balance = LossBalance(2, bound, balance_lr)
        self.features = None
        if not self.uses_labels:
            self.features = StudentAwareFeatureLoss(
                student, teacher_members(self.teacher), student_tap, teacher_tap, quantizer, distance, adaptor
            )

    def forward(self, inputs: Inputs, labels: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        logits = self.student_logits(inputs)
        mask = mask_of(inputs, logits)
        kd = kd_loss(logits, self.teacher_logits(inputs), self.temperature, mask)
        if self.features is not None:
            terms = (kd, self.features(inputs))
        elif labels is None:
            raise DataError("method gor with uses_labels=true needs labels; set uses_labels=false for label-free")
        else:
            terms = (ce_loss(logits, labels, mask), kd)
        loss = self.balance(terms)
        return loss, {name: t.detach() for name, t in zip(self.terms, terms)}

    def close(self) -> None:
        if self.features is not None:
            self.features.close()

    def extra_logs(self) -> dict[str, float]:
        s = self.balance.log_vars.detach().tolist()
        w = self.balance.weights()
        return {**{f"gor_s_{n}": v for n, v in zip(self.terms, s)}, **{f"gor_w_{n}": v for n, v in zip(self.terms, w)}}

"""Logit distillation losses. They take no labels: ``(student, teacher) -> Tensor``."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["kd_loss"]


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """``KL(softmax(z_T/T) || softmax(z_S/T)) * T^2``, averaged over the batch (Hinton et al. 2015).

    The T^2 factor keeps gradient magnitudes comparable across temperatures. This is the whole
    SQAKD objective: no labels and no loss weights.
    """
    t = float(temperature)
    log_p_s = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (t * t)

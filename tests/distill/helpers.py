"""Shared helpers of the distillation tests."""

from __future__ import annotations

import torch

from qdistill import QuantConfig
from qdistill.distill.student import make_student


def student_of(teacher: torch.nn.Module, images: torch.Tensor, method: str = "lsq", bits: int = 2) -> torch.nn.Module:
    """A calibrated quantized copy of ``teacher``."""
    return make_student(teacher, QuantConfig(method=method, weight_bits=bits, act_bits=bits), images)


def train_steps(objective, images, labels, steps: int, lr: float = 1e-2) -> list[float]:
    """Plain Adam steps on one batch; returns the losses."""
    params = list(objective.student.parameters()) + list(objective.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    losses = []
    for _ in range(steps):
        loss, _ = objective(images, labels if objective.uses_labels else None)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses

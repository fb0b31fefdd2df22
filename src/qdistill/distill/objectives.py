"""Training objectives: the loss of one step, built by name from a config.

An objective holds references to the student and the (frozen) teacher without registering them
as submodules, so its ``state_dict`` holds only its own trainable parts (regressors, memory banks,
loss-balance scalars) and the teacher never reaches a checkpoint or the optimizer.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, ClassVar, Self

import torch
from torch import Tensor, nn

from qdistill.batch import Inputs, call_model, logits_of
from qdistill.distill.kd import ce_loss, kd_loss
from qdistill.errors import ConfigError, DataError
from qdistill.registry import Registry

__all__ = [
    "CEKD",
    "OBJECTIVES",
    "SQAKD",
    "Objective",
    "SupervisedQAT",
    "build_objective",
    "freeze",
    "mask_of",
    "objective_params",
]

OBJECTIVES: Registry[type[Objective]] = Registry("method")


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode, no gradients: a teacher that nothing can change."""
    model.eval()
    model.requires_grad_(False)
    return model


def mask_of(inputs: Inputs, per_position: Tensor) -> Tensor | None:
    """A dict batch's ``attention_mask`` when it fits ``per_position`` (``[batch, tokens, ...]``: token
    logits or features), else None (image batches; one logit row per sequence, as a classifier's)."""
    mask = inputs.get("attention_mask") if isinstance(inputs, Mapping) else None
    return (
        mask
        if mask is not None
        and tuple(mask.shape) == tuple(per_position.shape[: mask.dim()])
        and (per_position.dim() > mask.dim())
        else None
    )


class Objective(nn.Module):
    """Base class. ``uses_labels`` tells the trainer whether to feed labels at all.

    ``forward(inputs, labels)`` takes an image tensor or a dict batch (``input_ids``,
    ``attention_mask``, ...; models are called with `qdistill.batch.call_model`), and the losses
    skip the positions the batch's ``attention_mask`` marks as padding.

    In eval mode (``objective.eval()``; the student keeps its own mode) a forward returns the
    training loss without side effects on the objective: no queue updates, no BatchNorm statistics
    of its modules, no stage counting. A loss estimate that must not disturb training (EWGS's
    Hessian) can run there.

    ``ensemble`` marks methods built to distil from several teachers (a run config's ``teachers``).
    """

    uses_labels: ClassVar[bool] = False
    needs_teacher: ClassVar[bool] = True
    ensemble: ClassVar[bool] = False

    def __init__(self, student: nn.Module, teacher: nn.Module | None) -> None:
        super().__init__()
        if self.needs_teacher and teacher is None:
            raise ConfigError(f"method {type(self).__name__} needs a teacher model")
        self._models = (student, freeze(teacher) if teacher is not None else None)

    @property
    def student(self) -> nn.Module:
        return self._models[0]

    @property
    def teacher(self) -> nn.Module | None:
        return self._models[1]

    def train(self, mode: bool = True) -> Objective:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # model.train() must never switch the teacher's BatchNorm
        return self

    @torch.no_grad()
    def teacher_logits(self, inputs: Inputs) -> Tensor:
        assert self.teacher is not None
        return logits_of(call_model(self.teacher, inputs))

    def student_logits(self, inputs: Inputs) -> Tensor:
        return logits_of(call_model(self.student, inputs))

    def forward(self, inputs: Inputs, labels: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Return the loss and a dict of scalar logs: detached 0-dim tensors, left on the device so
        that a step needs no host sync (the trainer reads them when it logs) and a compiled forward
        no graph break."""
        raise NotImplementedError

    def extra_logs(self) -> dict[str, float]:
        """Per-epoch values worth logging (e.g. learned loss weights)."""
        return {}

    def close(self) -> None:
        """Release what the objective attached to the models (feature hooks); safe to call twice."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@OBJECTIVES.register("sqakd")
class SQAKD(Objective):
    """Self-supervised quantization-aware KD (Zhao & Zhao, AISTATS 2024): KL only, no labels."""

    def __init__(self, student: nn.Module, teacher: nn.Module | None, temperature: float = 4.0) -> None:
        super().__init__(student, teacher)
        self.temperature = temperature

    def forward(self, inputs: Inputs, labels: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        logits = self.student_logits(inputs)
        loss = kd_loss(logits, self.teacher_logits(inputs), self.temperature, mask_of(inputs, logits))
        return loss, {"kd": loss.detach()}


@OBJECTIVES.register("qat")
class SupervisedQAT(Objective):
    """Standalone QAT baseline: cross-entropy on labels, no teacher."""

    uses_labels = True
    needs_teacher = False

    def forward(self, inputs: Inputs, labels: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        if labels is None:
            raise DataError(
                "method 'qat' trains on labels but the data has none; use a label-free method such as sqakd"
            )
        logits = self.student_logits(inputs)
        loss = ce_loss(logits, labels, mask_of(inputs, logits))
        return loss, {"ce": loss.detach()}


@OBJECTIVES.register("ce_kd")
class CEKD(Objective):
    """``(1 - lambda) * CE + lambda * KD``: the classic supervised KD baseline."""

    uses_labels = True

    def __init__(self, student: nn.Module, teacher: nn.Module | None, temperature: float = 4.0, kd_weight: float = 0.5):
        super().__init__(student, teacher)
        if not 0.0 <= kd_weight <= 1.0:
            raise ConfigError(f"method.kd_weight must be in [0, 1], got {kd_weight}")
        self.temperature, self.kd_weight = temperature, kd_weight

    def forward(self, inputs: Inputs, labels: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        if labels is None:
            raise DataError("method 'ce_kd' needs labels; use sqakd for label-free training")
        logits = self.student_logits(inputs)
        mask = mask_of(inputs, logits)
        ce = ce_loss(logits, labels, mask)
        kd = kd_loss(logits, self.teacher_logits(inputs), self.temperature, mask)
        loss = (1 - self.kd_weight) * ce + self.kd_weight * kd
        return loss, {"ce": ce.detach(), "kd": kd.detach()}


def objective_params(cls: type[Objective]) -> list[str]:
    """Parameter names an objective accepts, following ``**kwargs`` up to the base classes' ``__init__``."""
    names: list[str] = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        names += [
            p.name
            for p in params
            if p.name not in ("self", "student", "teacher", *names) and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names


def build_objective(name: str, student: nn.Module, teacher: nn.Module | None, **params: Any) -> Objective:
    """Construct a registered objective; unknown parameters fail with the allowed ones named."""
    cls = OBJECTIVES.get(name)
    allowed = objective_params(cls)
    for key in params:
        if key not in allowed:
            raise ConfigError(f"method {name!r}: unknown parameter {key!r}; allowed: {', '.join(allowed) or 'none'}")
    return cls(student, teacher, **params)

"""The common shape of the SQAKD paper's KD baselines: ``CE + lambda * L_distill`` on feature taps."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from qdistill.batch import Inputs, call_model, logits_of
from qdistill.distill.ensemble import TeacherEnsemble
from qdistill.distill.kd import ce_loss, upcast
from qdistill.distill.objectives import Objective, mask_of
from qdistill.distill.tap_rules import default_taps, probe_shapes
from qdistill.distill.taps import FeatureTaps
from qdistill.errors import ConfigError, DataError

__all__ = ["FeatureBaseline", "TwoStageBaseline", "conv_bn"]


def conv_bn(in_channels: int, out_channels: int, kernel: int = 1) -> nn.Sequential:
    """Conv + BN: the regressor / adaptor block several baselines put on the student side."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(out_channels)
    )


class FeatureBaseline(Objective):
    """Supervised KD baseline: cross-entropy on labels plus ``weight * distill(f_S, f_T)``.

    Subclasses set ``tap_rules`` (`qdistill.distill.tap_rules.TAP_KINDS` applied to each model)
    and ``default_weight`` (the paper's lambda), build any auxiliary modules from
    ``self.s_shapes`` / ``self.t_shapes`` after ``super().__init__`` (they train with the student
    and are saved in checkpoints), and implement `distill`.

    Args:
        weight: lambda; default: the value used for this method in the SQAKD paper's tables.
        student_taps / teacher_taps: override the tap names (same number on both sides).
    """

    uses_labels = True
    tap_rules: ClassVar[tuple[str, ...]] = ()
    default_weight: ClassVar[float] = 1.0

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        weight: float | None = None,
        student_taps: list[str] | None = None,
        teacher_taps: list[str] | None = None,
    ) -> None:
        if isinstance(teacher, TeacherEnsemble):
            raise ConfigError(f"{type(self).__name__} distils from one teacher; use ekd for an ensemble")
        super().__init__(student, teacher)
        self.weight = float(self.default_weight if weight is None else weight)
        s_taps = list(student_taps or [t for kind in self.tap_rules for t in default_taps(student, kind)])
        t_taps = list(teacher_taps or [t for kind in self.tap_rules for t in default_taps(teacher, kind)])
        if len(s_taps) != len(t_taps):
            raise ConfigError(f"{type(self).__name__}: {len(s_taps)} student taps but {len(t_taps)} teacher taps")
        self.s_shapes = list(probe_shapes(student, s_taps).values())
        self.t_shapes = list(probe_shapes(teacher, t_taps).values())
        self._taps = (FeatureTaps(student, s_taps), FeatureTaps(teacher, t_taps))

    def distill(self, s: list[Tensor], t: list[Tensor]) -> Tensor:
        """The method's loss between student features ``s`` and detached teacher features ``t``."""
        raise NotImplementedError

    def forward(self, inputs: Inputs, labels: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        if labels is None:
            raise DataError(f"{type(self).__name__} is CE + lambda * L and needs labels; use sqakd or squat without")
        logits = logits_of(call_model(self.student, inputs))
        s = [upcast(f) for f in self._taps[0].pop().values()]
        with torch.no_grad():
            call_model(self.teacher, inputs)
            t = [upcast(f) for f in self._taps[1].pop().values()]
        return self.loss(ce_loss(logits, labels, mask_of(inputs, logits)), s, t)

    def loss(self, ce: Tensor, s: list[Tensor], t: list[Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """The step's loss and logs from the cross-entropy and the features: ``CE + weight * distill``."""
        d = self.distill(s, t)
        return ce + self.weight * d, {"ce": ce.detach(), "distill": d.detach()}

    def close(self) -> None:
        """Remove the feature hooks from the student and the teacher."""
        for taps in self._taps:
            taps.close()


class TwoStageBaseline(FeatureBaseline):
    """A baseline whose reference trains in two stages: `init_loss` alone, then ``CE + weight * distill``.

    The first ``init_steps`` training forwards (counted in the ``init_step`` buffer, so a resumed
    run continues the count) return `init_loss` only; the switch happens inside the objective, so
    the trainer needs to know nothing about it. Forwards in eval mode do not count.

    Args:
        init_steps: length of the first stage in optimizer steps (0: skip it).
    """

    def __init__(self, student: nn.Module, teacher: nn.Module | None, init_steps: int = 100, **common) -> None:
        super().__init__(student, teacher, **common)
        if int(init_steps) != init_steps or init_steps < 0:
            raise ConfigError(f"{type(self).__name__}: init_steps must be an integer >= 0, got {init_steps!r}")
        self.init_steps = int(init_steps)
        self.register_buffer("init_step", torch.zeros((), dtype=torch.long))

    @property
    def initialising(self) -> bool:
        """True while the first stage lasts."""
        return int(self.init_step) < self.init_steps

    def init_loss(self, s: list[Tensor], t: list[Tensor]) -> Tensor:
        """The first stage's loss."""
        raise NotImplementedError

    def loss(self, ce: Tensor, s: list[Tensor], t: list[Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        if not (self.training and self.initialising):
            return super().loss(ce, s, t)
        self.init_step += 1
        init = self.init_loss(s, t)
        # 0 * CE keeps the whole student in the graph (a first stage that leaves it out, as FT's,
        # would make gradients with respect to the student's quantizers undefined, e.g. for EWGS)
        return init + 0.0 * ce, {"ce": ce.detach(), "init": init.detach()}

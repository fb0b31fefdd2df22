"""SQuaT: feature distillation on the student's quantization grid (label-free).

A full-precision teacher feature ``f_T`` cannot be matched exactly by a quantized student: it
lies between (and beyond) the student's levels, so an MSE to it keeps an irreducible residual.
SQuaT projects the target onto the grid the student uses at that position, with the student's
*current* quantizer parameters, ``P(f_T) = Q_S(f_T)``:

* interval (EWGS): ``round((L-1) * clamp((f_T - l) / (u - l), 0, 1)) / (L-1)`` times the scale;
* LSQ: ``clamp(round(f_T / s), Qn, Qp) * s``;
* PACT: ``clamp(f_T, 0, alpha)`` on 2^b levels of [0, alpha]; DoReFa: [0, 1].

``Quantizer.project`` computes exactly this and detaches it: no gradient reaches the teacher or
the student's quantizer through the target. The loss is ``KL_T(z_T || z_S) + D(f_S, P(f_T))``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from qdistill.batch import Inputs
from qdistill.distill.ensemble import TeacherEnsemble, as_ensemble, teacher_members
from qdistill.distill.feature_losses import FEATURE_DISTANCES, match_spatial
from qdistill.distill.kd import kd_loss, upcast
from qdistill.distill.objectives import OBJECTIVES, Objective, mask_of
from qdistill.distill.tap_rules import default_taps, probe_shapes, squat_layer
from qdistill.distill.taps import FeatureTaps
from qdistill.errors import ConfigError
from qdistill.quant.base import Quantizer

__all__ = ["EnsembleKD", "SQuaT", "StudentAwareFeatureLoss", "at_temperature", "student_aware_target"]


def student_aware_target(teacher_feature: Tensor, quantizer: Quantizer, like: Tensor | None = None) -> Tensor:
    """``P(f_T)``: the teacher feature (resized to ``like``'s spatial size) on the student's grid, detached."""
    f = teacher_feature.detach()
    return quantizer.project(match_spatial(f, like) if like is not None else f)


def _width(shape: tuple[int, ...]) -> int:
    """Channels of a map or vector (dim 1), width of a token feature ``[batch, tokens, width]``."""
    return shape[-1] if len(shape) == 3 else shape[1]


def _adaptor(in_channels: int, out_channels: int, dims: int) -> nn.Module:
    """Lets the student match another width: 1x1 conv + BN for maps, linear + BN for vectors,
    linear + LayerNorm for token features ``[batch, tokens, width]``."""
    if dims == 4:
        return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
    norm = nn.LayerNorm(out_channels) if dims == 3 else nn.BatchNorm1d(out_channels)
    return nn.Sequential(nn.Linear(in_channels, out_channels, bias=False), norm)


class StudentAwareFeatureLoss(nn.Module):
    """``mean_i D(a_i(f_S), P(f_Ti))`` over one or several teachers, read through feature taps.

    Call it after the student and the teachers ran forward on the same batch.

    Args:
        student: the quantized student.
        teachers: the frozen teachers (several for an ensemble).
        student_tap: default: the quantized input (the ``act_quant`` output) of `squat_layer`: the
            last quantized conv of a CNN; on a transformer the last block's ``intermediate.dense``
            (BERT-style), ``mlp.down_proj`` (Llama-style), or the FFN layer found by shape.
        teacher_taps: one per teacher (a single name for one teacher); default: the input of the
            same-named layer when the teacher has one, else the input of the teacher's last conv.
        quantizer: name of the student quantizer whose grid ``P`` uses; default that layer's ``act_quant``.
        distance: a `FEATURE_DISTANCES` name: ``mse``, ``l1``, ``cosine`` or ``kl_hist``.
        adaptor: put a 1x1 conv + BN on the student side; added anyway for a teacher whose feature
            has a different number of channels.
    """

    def __init__(
        self,
        student: nn.Module,
        teachers: Sequence[nn.Module],
        student_tap: str | None = None,
        teacher_taps: str | Sequence[str] | None = None,
        quantizer: str | None = None,
        distance: str = "mse",
        adaptor: bool = False,
    ) -> None:
        super().__init__()
        teacher_taps = [teacher_taps] if isinstance(teacher_taps, str) else teacher_taps
        conv = squat_layer(student) if student_tap is None or quantizer is None else None
        student_tap = student_tap or f"{conv}.act_quant"
        quantizer = quantizer or f"{conv}.act_quant"
        q = student.get_submodule(quantizer)
        if not isinstance(q, Quantizer):
            raise ConfigError(f"squat quantizer {quantizer!r} is a {type(q).__name__}, not a quantizer")
        if teacher_taps is None:
            teacher_taps = [
                f"{conv}:input" if conv in dict(t.named_modules()) else default_taps(t, "last_conv")[0]
                for t in teachers
            ]
        if len(teacher_taps) != len(teachers):
            raise ConfigError(f"squat: got {len(teacher_taps)} teacher taps for {len(teachers)} teachers")
        self.distance = FEATURE_DISTANCES.get(distance)
        s_shape = probe_shapes(student, [student_tap])[student_tap]
        t_channels = [_width(probe_shapes(t, [k])[k]) for t, k in zip(teachers, teacher_taps)]
        s_width = _width(s_shape)
        self.adaptors = nn.ModuleList(
            _adaptor(s_width, c, len(s_shape)) if adaptor or c != s_width else nn.Identity() for c in t_channels
        )
        self._quantizer = (q,)  # a tuple: the student's quantizer must not become our submodule
        teacher_hooks = (FeatureTaps(t, [k]) for t, k in zip(teachers, teacher_taps))
        self._taps = (FeatureTaps(student, [student_tap]), *teacher_hooks)

    def forward(self, inputs: Inputs | None = None) -> Tensor:
        """The loss on the features of the last forward; for token features only the tokens that
        the batch's ``attention_mask`` keeps count."""
        (f_s,) = self._taps[0].pop().values()
        mask = mask_of(inputs, f_s) if inputs is not None else None
        losses = []
        for taps, adapt in zip(self._taps[1:], self.adaptors):
            (f_t,) = taps.pop().values()
            student, target = adapt(f_s), student_aware_target(f_t, self._quantizer[0], f_s)
            if mask is not None:
                student, target = student[mask.bool()], target[mask.bool()]
            losses.append(self.distance(upcast(student), upcast(target)))
        return torch.stack(losses).mean()

    def close(self) -> None:
        """Remove the hooks from the student and the teachers."""
        for taps in self._taps:
            taps.close()


def at_temperature(teacher: nn.Module, temperature: float) -> nn.Module:
    """An ensemble teacher re-built with the KD temperature (its pseudo-logits are exact only at its own T)."""
    if isinstance(teacher, TeacherEnsemble) and teacher.temperature != temperature:
        weights = teacher.weights.tolist() if teacher.combine == "weighted" else None
        return as_ensemble(teacher, teacher.combine, weights, temperature)
    return teacher


@OBJECTIVES.register("squat")
class SQuaT(Objective):
    """``kd_weight * KL_T(z_T || z_S) + feature_weight * D(f_S, P(f_T))``; never reads labels.

    Works with one teacher or a `TeacherEnsemble` (one feature term per member). See
    `StudentAwareFeatureLoss` for the tap, quantizer, distance and adaptor parameters.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        temperature: float = 4.0,
        kd_weight: float = 1.0,
        feature_weight: float = 1.0,
        distance: str = "mse",
        student_tap: str | None = None,
        teacher_tap: str | list[str] | None = None,
        quantizer: str | None = None,
        adaptor: bool = False,
    ) -> None:
        teacher = at_temperature(teacher, temperature) if teacher is not None else None
        super().__init__(student, teacher)
        self.temperature, self.kd_weight, self.feature_weight = temperature, kd_weight, feature_weight
        self.features = StudentAwareFeatureLoss(
            student, teacher_members(self.teacher), student_tap, teacher_tap, quantizer, distance, adaptor
        )

    def close(self) -> None:
        self.features.close()

    def forward(self, inputs: Inputs, labels: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        logits = self.student_logits(inputs)
        kd = kd_loss(logits, self.teacher_logits(inputs), self.temperature, mask_of(inputs, logits))
        feat = self.features(inputs)
        loss = self.kd_weight * kd + self.feature_weight * feat
        return loss, {"kd": kd.detach(), "feat": feat.detach()}


@OBJECTIVES.register("ekd")
class EnsembleKD(SQuaT):
    """QAT-EKD: KL to an ensemble of heterogeneous frozen teachers + SQuaT feature KD from each.

    ``teacher`` is a `TeacherEnsemble` (``teachers:`` in a run config) or a list of models; the
    members are re-combined with ``combine`` (``mean``, ``weighted`` with ``weights``, or per-sample
    ``confidence``) at the KD temperature. Label-free.
    """

    ensemble = True

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | Sequence[nn.Module] | None,
        combine: str = "mean",
        weights: list[float] | None = None,
        temperature: float = 4.0,
        **squat_params,
    ) -> None:
        if teacher is None:
            raise ConfigError("method ekd needs teachers (the run config's 'teachers' list)")
        super().__init__(student, as_ensemble(teacher, combine, weights, temperature), temperature, **squat_params)

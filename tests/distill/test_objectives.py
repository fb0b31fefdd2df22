"""The objective registry and life cycle: custom registrations through build_objective, hooks removed by close()."""

import math

import pytest
import torch

from qdistill.distill import BASELINES, OBJECTIVES, Objective, build_objective
from qdistill.errors import ConfigError

from .helpers import student_of

FEATURE_METHODS = ["squat", "ekd", "gor", *BASELINES]


def _hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_a_custom_objective_registered_by_name_is_built_with_checked_params(monkeypatch, teacher, batch):
    monkeypatch.setattr(OBJECTIVES, "_items", dict(OBJECTIVES._items))  # the registration ends with the test

    @OBJECTIVES.register("mean_logit_gap")
    class MeanLogitGap(Objective):
        def __init__(self, student, teacher, scale: float = 1.0) -> None:
            super().__init__(student, teacher)
            self.scale = scale

        def forward(self, inputs, labels=None):
            gap = (self.student_logits(inputs) - self.teacher_logits(inputs)).abs().mean()
            return self.scale * gap, {"gap": float(gap.detach())}

    images = batch[0][:2]
    student = student_of(teacher, images)
    objective = build_objective("mean_logit_gap", student, teacher, scale=3.0)
    loss, logs = objective(images)
    gap = (student(images) - teacher(images)).abs().mean().item()
    assert isinstance(objective, MeanLogitGap) and logs["gap"] == pytest.approx(gap)
    assert float(loss.detach()) == pytest.approx(3.0 * gap)
    with pytest.raises(ConfigError, match="unknown parameter 'weight'; allowed: scale"):
        build_objective("mean_logit_gap", student, teacher, weight=1.0)


@pytest.mark.parametrize("method", FEATURE_METHODS)
def test_close_removes_every_feature_hook(teacher, batch, method):
    images = batch[0]
    student = student_of(teacher, images)
    teachers = [teacher, student_of(teacher, images, bits=4)] if method == "ekd" else teacher
    before = _hooks(student) + _hooks(teacher)
    with build_objective(method, student, teachers) as objective:
        assert _hooks(student) + _hooks(teacher) > before
        loss, _ = objective(images, batch[1] if objective.uses_labels else None)
        assert math.isfinite(float(loss.detach()))
    assert _hooks(student) + _hooks(teacher) == before
    objective.close()  # a second close is harmless


@pytest.mark.parametrize("method", ["sqakd", "ce_kd", *FEATURE_METHODS])
def test_eval_mode_forward_leaves_the_objective_untouched(teacher, batch, method):
    images, labels = batch
    student = student_of(teacher, images).train()
    teachers = [teacher, student_of(teacher, images, bits=4)] if method == "ekd" else teacher
    with build_objective(method, student, teachers) as objective:
        objective.train()(images, labels)  # fill queues / statistics once, as training does
        before = {k: v.clone() for k, v in objective.state_dict().items()}
        loss, _ = objective.eval()(images, labels if objective.uses_labels else None)
        assert torch.isfinite(loss) and loss.requires_grad  # still the differentiable training loss
        assert all(torch.equal(before[k], v) for k, v in objective.state_dict().items())

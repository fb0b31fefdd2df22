"""Divergence stops the run with one clear line, also when the loss never reaches NaN."""

import pytest
import torch
from torch import nn

from qdistill.distill import build_objective
from qdistill.distill.objectives import Objective
from qdistill.distill.student import make_student
from qdistill.errors import ConfigError, DivergedError
from qdistill.quant import QuantConfig
from qdistill.train import TrainConfig, Trainer


class Scripted(Objective):
    """A loss that follows a script (its gradient is ``grad_scale`` times the weight's)."""

    needs_teacher = False

    def __init__(self, student, losses, grad_scale=0.0):
        super().__init__(student, None)
        self.losses, self.grad_scale = iter(losses), grad_scale

    def forward(self, inputs, labels=None):
        w = self.student.weight.sum()
        return w * self.grad_scale - (w * self.grad_scale).detach() + next(self.losses), {}


def _fit(losses, grad_scale=0.0, tmp=None, **cfg):
    student = nn.Linear(1, 1, bias=False)
    data = [torch.ones(1, 1)] * len(losses)
    cfg = TrainConfig(epochs=1, progress=False, optimizer="sgd", momentum=0.0, **cfg)
    return Trainer(Scripted(student, losses, grad_scale), data, cfg, out_dir=tmp).fit()


def test_loss_far_above_its_start_stops_with_epoch_step_and_value(tmp_path):
    with pytest.raises(DivergedError, match=r"epoch 1, step 4: loss is 5000, over 1000x the first steps' mean 1\b"):
        _fit([1.0, 1.0, 1.0, 5000.0, 1.0], tmp=tmp_path)
    assert not (tmp_path / "last.pt").exists()


def test_a_high_loss_below_the_floor_or_the_factor_trains_on():
    assert len(_fit([0.01, 0.01, 50.0, 0.01])) == 1  # 5000x the start, but under diverge_min_loss (100)
    assert len(_fit([1.0, 1.0, 900.0, 1.0])) == 1  # above the floor, but under 1000x the start
    assert len(_fit([1.0, 5000.0], diverge_factor=None)) == 1  # check off


def test_nan_loss_is_diverged():
    with pytest.raises(DivergedError, match="step 2: loss is nan"):
        _fit([1.0, float("nan")])


def test_weights_that_overflow_after_a_step_stop_the_run():
    # a finite loss whose gradient, at lr 1e10, pushes the weight past float32's range
    with pytest.raises(DivergedError, match="step 1: a weight became NaN or infinite"):
        _fit([1.0, 1.0], grad_scale=1e30, lr=1e10)


def test_huge_learning_rate_on_a_real_student_stops(teacher):
    student = make_student(teacher, QuantConfig(method="lsq", weight_bits=2, act_bits=2), torch.randn(16, 1, 8, 8))
    data = [torch.randn(16, 1, 8, 8) for _ in range(20)]
    cfg = TrainConfig(epochs=1, lr=1e9, optimizer="sgd", progress=False)
    with pytest.raises(DivergedError, match="training diverged at epoch 1"):
        Trainer(build_objective("sqakd", student, teacher), data, cfg).fit()


@pytest.mark.parametrize("kwargs", [{"diverge_factor": 1.0}, {"diverge_min_loss": -1.0}])
def test_divergence_knobs_are_validated(kwargs):
    with pytest.raises(ConfigError, match="train.diverge"):
        TrainConfig(**kwargs)

"""Step logs stay tensors on the device; the host reads them once per `CHECK_EVERY` steps and at epoch end.

The epoch means must be those of the step losses added up as Python floats (what the trainer did
when each step synced), and the divergence checks must still stop the run at the right step,
before a checkpoint can hold a diverged state.
"""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from qdistill.data import BatchLoader, ImageSet
from qdistill.distill import build_objective
from qdistill.distill.objectives import Objective
from qdistill.errors import DivergedError
from qdistill.train import TrainConfig, Trainer
from qdistill.train import trainer as trainer_module
from qdistill.train.checkpoint import load_checkpoint


class Scripted(Objective):
    """Losses (and an ``aux`` log, a third of each) from a script; zero gradients."""

    needs_teacher = False

    def __init__(self, student, losses):
        super().__init__(student, None)
        self.losses = iter(losses)

    def forward(self, inputs, labels=None):
        loss = self.student(inputs.flatten(1)).sum() * 0.0 + next(self.losses)
        return loss, {"aux": loss.detach() / 3}


class StepLog:
    def __init__(self):
        self.logs = []

    def on_step_end(self, trainer, logs):
        self.logs.append(logs)


def _loader(n):
    images = np.arange(n * 4, dtype=np.uint8).reshape(n, 2, 2, 1)
    return BatchLoader(ImageSet(images, None), 1, mean=(0.0,), std=(1.0,), with_labels=False)


def _fit(losses, tmp=None, **cfg):
    cfg = TrainConfig(epochs=1, progress=False, optimizer="sgd", momentum=0.0, **cfg)
    log = StepLog()
    history = Trainer(Scripted(nn.Linear(4, 1), losses), _loader(len(losses)), cfg, out_dir=tmp, callbacks=[log]).fit()
    return history, log


def test_epoch_means_are_the_step_losses_summed_as_python_floats():
    losses = [0.1, 0.7, 1e-3, 2.2, 0.35]
    (row,), log = _fit(losses)
    f32 = [float(np.float32(v)) for v in losses]  # each step's loss is a float32 tensor
    assert row["train_loss"] == sum(f32) / 5  # exactly: float64 on the device adds as Python does
    assert row["train_aux"] == sum(float(np.float32(v) / np.float32(3)) for v in losses) / 5
    assert all(type(v) is float for k, v in row.items() if k.startswith("train_"))
    for logs, v in zip(log.logs, f32, strict=True):
        assert logs["loss"].dtype == torch.float64 and logs["loss"].dim() == 0 and float(logs["loss"]) == v


def test_a_real_fits_metrics_are_the_mean_of_its_step_logs(teacher, tiny_images, make_loader):
    cfg = TrainConfig(epochs=2, progress=False, ewgs_every=0)
    log = StepLog()
    objective = build_objective("sqakd", copy.deepcopy(teacher).train(), teacher)
    history = Trainer(objective, make_loader(tiny_images, False), cfg, callbacks=[log]).fit()
    per_epoch = len(log.logs) // 2
    for e, row in enumerate(history):
        steps = log.logs[e * per_epoch : (e + 1) * per_epoch]
        assert row["train_loss"] == sum(float(s["loss"]) for s in steps) / per_epoch
        assert row["train_kd"] == sum(float(s["kd"]) for s in steps) / per_epoch


def test_the_host_checks_once_per_check_every_steps(monkeypatch):
    monkeypatch.setattr(trainer_module, "CHECK_EVERY", 3)
    seen = []
    check = Trainer._check_steps
    monkeypatch.setattr(Trainer, "_check_steps", lambda self: seen.append(len(self._unchecked)) or check(self))
    _fit([1.0] * 7)
    assert seen == [3, 3, 1]  # steps 1-3, 4-6, then 7 at the epoch end


def test_divergence_between_checks_names_its_step(monkeypatch):
    monkeypatch.setattr(trainer_module, "CHECK_EVERY", 4)
    with pytest.raises(DivergedError, match=r"step 2: loss is nan"):
        _fit([1.0, float("nan"), 1.0, 1.0, 1.0])
    with pytest.raises(DivergedError, match=r"step 6: loss is 5000, over 1000x"):
        _fit([1.0] * 5 + [5000.0, 1.0])


def test_no_checkpoint_is_written_after_an_unchecked_divergence(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_module, "CHECK_EVERY", 100)
    with pytest.raises(DivergedError, match="step 7: loss is nan"):
        _fit([1.0] * 6 + [float("nan"), 1.0], tmp=tmp_path, checkpoint_every=4)
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["step"] == 4  # the step-8 checkpoint would hold steps 5-8: the check stopped it
    assert state["sums"] == {"loss": 4.0, "aux": pytest.approx(4 / 3)}
    assert state["start_losses"] == [1.0] * 4

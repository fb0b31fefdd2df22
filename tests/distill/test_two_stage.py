"""FSP and FT train in two stages, as their references: the switch is counted inside the objective."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qdistill.data import BatchLoader, ImageSet
from qdistill.distill import build_objective
from qdistill.errors import ConfigError
from qdistill.train import TrainConfig, Trainer

from .helpers import student_of


def _grads(module: torch.nn.Module) -> bool:
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_fsp_trains_on_fsp_alone_then_on_cross_entropy(teacher, batch):
    images, labels = batch
    student = student_of(teacher, images)
    objective = build_objective("fsp", student, teacher, init_steps=2).train()
    for _ in range(2):
        loss, logs = objective(images, labels)
        assert "init" in logs and float(loss.detach()) == pytest.approx(float(logs["init"]))
    student.zero_grad()
    loss, logs = objective(images, labels)  # stage 2: CE only (weight 0, the reference)
    with torch.no_grad():
        ce = float(F.cross_entropy(student(images), labels))
    assert "distill" in logs and float(loss.detach()) == pytest.approx(ce)
    assert objective.state_dict()["init_step"] == 2


def test_stage_count_ignores_eval_forwards_and_resumes_from_the_state_dict(teacher, batch):
    images, labels = batch
    objective = build_objective("fsp", student_of(teacher, images), teacher, init_steps=3)
    objective.eval()(images, labels)
    objective.train()(images, labels)
    resumed = build_objective("fsp", student_of(teacher, images), teacher, init_steps=3)
    resumed.load_state_dict(objective.state_dict())
    assert int(resumed.init_step) == 1 and resumed.initialising
    with pytest.raises(ConfigError, match="init_steps"):
        build_objective("fsp", student_of(teacher, images), teacher, init_steps=-1)


def test_ft_pretrains_the_paraphraser_then_freezes_it(teacher, batch):
    images, labels = batch
    student = student_of(teacher, images)
    objective = build_objective("ft", student, teacher, init_steps=1).train()
    loss, logs = objective(images, labels)  # stage 1: reconstruction only
    loss.backward()
    assert "init" in logs and _grads(objective.encoders) and _grads(objective.decoders)
    assert not _grads(student) and not _grads(objective.translators)
    objective.zero_grad()
    loss, logs = objective(images, labels)  # stage 2: CE + 200 * factor loss, paraphraser frozen
    loss.backward()
    assert "distill" in logs and not _grads(objective.encoders) and not objective.encoders.training
    assert _grads(student) and _grads(objective.translators)


@pytest.mark.parametrize("method", ["ft", "fsp"])
def test_two_stage_baselines_train_an_ewgs_student_through_the_trainer(teacher, batch, method):
    rng = np.random.default_rng(0)
    data = ImageSet(rng.integers(0, 256, (32, 8, 8, 1), dtype=np.uint8), labels=rng.integers(0, 10, 32))
    loader = BatchLoader(data, 16, mean=[0.5], std=[0.25], shuffle=True)
    objective = build_objective(method, student_of(teacher, batch[0], "ewgs"), teacher, init_steps=1)
    history = Trainer(objective, loader, TrainConfig(epochs=2, progress=False, ewgs_every=1), loader).fit()
    assert len(history) == 2 and not objective.initialising  # the EWGS estimate ran in both stages

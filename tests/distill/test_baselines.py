import math

import pytest
import torch

from qdistill import create_model
from qdistill.distill import BASELINES, OBJECTIVES, build_objective
from qdistill.distill.baselines import FeatureBaseline
from qdistill.distill.objectives import objective_params

from .helpers import student_of, train_steps

# lambda of the SQAKD paper's Table 12 / its scripts; fsp's second stage is CE only (its code drops the 50),
# cktf is 1.0 * CRD(penultimate) + stage_weight 0.8 * sum of the stage terms
PAPER_LAMBDA = {
    "crd": 0.8,
    "at": 1000,
    "nst": 50,
    "sp": 3000,
    "rkd": 1.0,
    "fitnet": 100,
    "cc": 0.02,
    "vid": 1.0,
    "fsp": 0.0,
    "ft": 200,
    "cktf": 1.0,
}
WITH_MODULES = {"fitnet", "vid", "ft", "crd", "cktf"}


def test_all_eleven_baselines_are_registered_with_the_papers_lambda():
    assert set(BASELINES) == set(PAPER_LAMBDA)
    for name, lam in PAPER_LAMBDA.items():
        cls = OBJECTIVES.get(name)
        assert issubclass(cls, FeatureBaseline) and cls.uses_labels
        assert cls.default_weight == lam
    assert (
        OBJECTIVES.get("cktf")(
            create_model("smallcnn", num_classes=10, in_channels=1),
            create_model("smallcnn", num_classes=10, in_channels=1),
        ).stage_weight
        == 0.8
    )


@pytest.mark.parametrize("name", BASELINES)
def test_baseline_loss_is_finite_and_decreases(teacher, batch, name):
    images, labels = batch
    torch.manual_seed(0)
    objective = build_objective(name, student_of(teacher, images), teacher)
    losses = train_steps(objective, images, labels, 25, lr=3e-3)
    assert all(math.isfinite(v) for v in losses), losses
    assert sum(losses[-3:]) < sum(losses[:3]), losses
    _, logs = objective.eval()(images, labels)
    assert math.isfinite(logs["distill"])


@pytest.mark.parametrize("name", sorted(WITH_MODULES))
def test_auxiliary_modules_train_and_are_saved(teacher, batch, name):
    images, labels = batch
    objective = build_objective(name, student_of(teacher, images), teacher)
    state = {k: v.clone() for k, v in objective.state_dict().items()}
    assert state, "auxiliary modules must be in the objective's state_dict (saved in checkpoints)"
    train_steps(objective, images, labels, 2)
    assert any(not torch.equal(state[k], v) for k, v in objective.state_dict().items())
    assert not any(k.startswith(("student", "teacher")) for k in state)


@pytest.mark.parametrize("name", BASELINES)
def test_baselines_run_on_a_resnet_with_its_stage_taps(name):
    torch.manual_seed(0)
    teacher = create_model("resnet20", num_classes=10, in_channels=1).eval()
    images, labels = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    objective = build_objective(name, student_of(teacher, images), teacher)
    loss, _ = objective(images, labels)
    loss.backward()
    assert math.isfinite(float(loss.detach()))


def test_baselines_need_labels_and_accept_tap_overrides(teacher, batch):
    images, _ = batch
    objective = build_objective(
        "at",
        student_of(teacher, images),
        teacher,
        weight=10.0,
        student_taps=["relu1", "relu3"],
        teacher_taps=["relu1", "relu3"],
    )
    assert objective.weight == 10.0 and objective._taps[0].names == ["relu1", "relu3"]
    with pytest.raises(ValueError, match="needs labels"):
        objective(images)
    with pytest.raises(ValueError, match="student taps"):
        build_objective("at", student_of(teacher, images), teacher, student_taps=["relu1"], teacher_taps=[])


def test_parameters_are_validated_through_inherited_signatures(teacher, batch):
    assert objective_params(OBJECTIVES.get("fitnet")) == ["weight", "student_taps", "teacher_taps"]
    assert {"combine", "distance", "adaptor"} <= set(objective_params(OBJECTIVES.get("ekd")))
    with pytest.raises(ValueError, match="allowed: .*student_taps"):
        build_objective("crd", student_of(teacher, batch[0]), teacher, lambda_=1.0)

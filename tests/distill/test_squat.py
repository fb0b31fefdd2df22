import pytest
import torch

from qdistill.distill import build_objective, student_aware_target
from qdistill.quant import QUANTIZERS
from qdistill.quant.api import named_quantizers

from .helpers import student_of, train_steps

# A post-ReLU teacher feature and its hand-computed 2-bit targets on each quantizer's grid
# (values chosen away from rounding ties). PACT alpha 2 / EWGS [0, 2]: steps of 2/3 on [0, 2]
# (EWGS then times its output scale 3); LSQ: steps of 0.25 up to 3 * 0.25; DoReFa: thirds of [0, 1].
FEATURE = [-0.5, 0.1, 0.4, 0.9, 1.2, 3.0]
HAND_TARGETS = {
    "pact": ({"alpha": 2.0}, [0.0, 0.0, 2 / 3, 2 / 3, 4 / 3, 2.0]),
    "lsq": ({"step": 0.25}, [0.0, 0.0, 0.5, 0.75, 0.75, 0.75]),
    "dorefa": ({}, [0.0, 0.0, 1 / 3, 1.0, 1.0, 1.0]),
    "ewgs": ({"lower": 0.0, "upper": 2.0, "out_scale": 3.0}, [0.0, 0.0, 1.0, 1.0, 2.0, 3.0]),
}


@pytest.mark.parametrize("method", sorted(HAND_TARGETS))
def test_targets_lie_on_the_hand_computed_grid_levels(method):
    params, expected = HAND_TARGETS[method]
    q = QUANTIZERS.get(method)(2, is_weight=False)
    q.initialize(torch.rand(256))  # unsigned: a post-ReLU calibration batch
    with torch.no_grad():
        for name, value in params.items():
            getattr(q, name).fill_(value)
    target = student_aware_target(torch.tensor(FEATURE).view(1, -1, 1, 1), q).flatten()
    assert torch.allclose(target, torch.tensor(expected), atol=1e-6), target


def test_targets_are_resized_to_the_student_feature_first():
    q = QUANTIZERS.get("dorefa")(2, is_weight=False)
    q.initialize(torch.rand(16))
    f_t = torch.tensor([[0.0, 0.2], [0.5, 0.9]]).view(1, 1, 2, 2)  # mean 0.4 -> level 1/3
    target = student_aware_target(f_t, q, like=torch.zeros(1, 1, 1, 1))
    assert target.shape == (1, 1, 1, 1) and float(target) == pytest.approx(1 / 3)


def test_squat_projects_with_the_student_quantizer_of_its_tap(teacher, batch):
    student = student_of(teacher, batch[0])
    objective = build_objective("squat", student, teacher)
    assert objective.features._quantizer[0] is student.conv3.act_quant


def test_target_is_detached_from_teacher_and_quantizer():
    q = QUANTIZERS.get("lsq")(2, is_weight=False)
    q.initialize(torch.rand(64))
    f_t = torch.rand(2, 4, requires_grad=True)
    target = student_aware_target(f_t, q)
    assert not target.requires_grad and target.grad_fn is None


def test_squat_gradients_reach_the_student_but_never_the_teacher(teacher, batch):
    images, _ = batch
    student = student_of(teacher, images)
    teacher.requires_grad_(True)  # even a teacher left trainable must get nothing
    objective = build_objective("squat", student, teacher)
    teacher.requires_grad_(True)
    loss, _ = objective(images)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student.conv2.weight.grad is not None and student.conv2.weight.grad.abs().sum() > 0


def test_squat_default_taps_and_distances(teacher, batch):
    images, _ = batch
    for distance in ("mse", "l1", "cosine", "kl_hist"):
        objective = build_objective("squat", student_of(teacher, images), teacher, distance=distance, adaptor=True)
        losses = train_steps(objective, images, None, 8, lr=5e-3)
        assert all(torch.isfinite(torch.tensor(losses))), distance
        assert losses[-1] < losses[0], distance
    assert objective.features._taps[0].names == ["conv3.act_quant"]
    assert objective.features._taps[1].names == ["conv3:input"]
    assert any(k.startswith("features.adaptors") for k in objective.state_dict())


@pytest.mark.parametrize("method", QUANTIZERS.names())
@pytest.mark.parametrize("bits", [1, 2, 4])
def test_squat_trains_with_every_quantizer_and_bit_width(teacher, batch, method, bits):
    images, _ = batch
    objective = build_objective("squat", student_of(teacher, images, method, bits), teacher)
    losses = train_steps(objective, images, None, 3)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert dict(named_quantizers(objective.student))  # still quantized


def test_unknown_distance_is_rejected(teacher, batch):
    with pytest.raises(ValueError, match="feature distance"):
        build_objective("squat", student_of(teacher, batch[0]), teacher, distance="l3")

import pytest
import torch

from qdistill.distill import build_objective, student_aware_target
from qdistill.quant import QUANTIZERS
from qdistill.quant.api import named_quantizers

from .helpers import student_of, train_steps


@pytest.mark.parametrize("method", QUANTIZERS.names())
@pytest.mark.parametrize("bits", [1, 2, 4])
@pytest.mark.parametrize("signed", [False, True])
def test_projection_equals_the_student_quantizer_output(method, bits, signed):
    q = QUANTIZERS.get(method)(bits, is_weight=False)
    calib = torch.randn(256) if signed else torch.rand(256) * 3
    q.initialize(calib)
    with torch.no_grad():  # move the learnable range away from its initial value
        for p in q.parameters():
            p.mul_(0.7)
    f_t = torch.randn(4, 3, 5, 5) * 2
    assert torch.equal(student_aware_target(f_t, q), q(f_t).detach())


def test_projection_of_a_student_in_a_model_matches_its_own_input_quantization(teacher, batch):
    images, _ = batch
    student = student_of(teacher, images, "ewgs", 2)
    q = student.conv3.act_quant
    feature = torch.relu(torch.randn(2, 16, 4, 4))
    assert torch.equal(student_aware_target(feature, q), q(feature).detach())


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
    loss, logs = objective(images)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student.conv2.weight.grad is not None and logs["feat"] >= 0


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

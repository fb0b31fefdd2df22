"""Loss precision: half-precision tensors are lifted to float32, a float64 run stays float64."""

import pytest
import torch

from qdistill.distill import build_objective
from qdistill.distill.feature_losses import FEATURE_DISTANCES
from qdistill.distill.kd import upcast

from .helpers import student_of


def test_upcast_lifts_half_precision_and_keeps_float64():
    assert upcast(torch.zeros(2, dtype=torch.bfloat16)).dtype == torch.float32
    assert upcast(torch.zeros(2, dtype=torch.float16)).dtype == torch.float32
    assert upcast(torch.zeros(2, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("method", ["sqakd", "squat", "gor", "ekd"])
def test_a_float64_run_gets_a_float64_loss(teacher, batch, method):
    images = batch[0].double()
    teacher = teacher.double()
    student = student_of(teacher, images).double()
    teachers = [teacher, teacher] if method == "ekd" else teacher
    loss, logs = build_objective(method, student, teachers).double()(images)
    assert loss.dtype == torch.float64 and all(term.dtype == torch.float64 for term in logs.values()), logs


def test_histogram_kl_of_float64_features_stays_float64():
    target = torch.linspace(0, 1, 64, dtype=torch.float64)
    assert FEATURE_DISTANCES.get("kl_hist")(target + 1e-3, target).dtype == torch.float64

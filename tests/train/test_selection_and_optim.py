"""Best-epoch selection, label-free runs with poisoned labels, SGD + nesterov and gradient clipping by hand."""

import numpy as np
import pytest
import torch
from torch import nn

from qdistill.data import BatchLoader, ImageSet
from qdistill.distill import build_objective
from qdistill.distill.objectives import Objective
from qdistill.distill.student import make_student
from qdistill.quant import QuantConfig
from qdistill.train import TrainConfig, Trainer, load_checkpoint

FAST = {"progress": False, "hessian_probes": 1}


def _student(teacher, method="ewgs"):
    torch.manual_seed(11)
    return make_student(teacher, QuantConfig(method=method, weight_bits=2, act_bits=2), torch.randn(16, 1, 8, 8))


VAL = [
    {"val_top1": 50.0, "val_agreement": 90.0},
    {"val_top1": 70.0, "val_agreement": 80.0},
    {"val_top1": 60.0, "val_agreement": 85.0},
]


@pytest.mark.parametrize("method, best", [("sqakd", 1), ("ce_kd", 2)])
def test_best_epoch_is_agreement_for_label_free_and_top1_otherwise(
    teacher, tiny_images, make_loader, tmp_path, method, best
):
    labels = method != "sqakd"
    trainer = Trainer(
        build_objective(method, _student(teacher), teacher),
        make_loader(tiny_images, labels=labels),
        TrainConfig(epochs=3, **FAST),
        make_loader(tiny_images, labels=labels),
        tmp_path,
    )
    scripted = iter(VAL)
    trainer.validate = lambda: dict(next(scripted))
    trainer.fit()
    assert trainer.best["epoch"] == best and load_checkpoint(tmp_path / "best.pt")["epoch"] == best
    assert trainer.best["score"] == VAL[best - 1]["val_agreement" if method == "sqakd" else "val_top1"]


def test_labelled_method_without_validation_labels_falls_back_to_agreement(teacher, tiny_images, make_loader):
    trainer = Trainer(
        build_objective("ce_kd", _student(teacher), teacher),
        make_loader(tiny_images, labels=True),
        TrainConfig(epochs=3, **FAST),
        make_loader(tiny_images, labels=False),
    )
    scripted = iter([{"val_agreement": a["val_agreement"]} for a in VAL])
    trainer.validate = lambda: next(scripted)
    trainer.fit()
    assert trainer.best["epoch"] == 1


def test_label_free_run_is_blind_to_poisoned_labels(teacher, tiny_images):
    """Labels sit in the data (true vs permuted): a label-free run must come out bit-identical,
    while a supervised run (the control) on the same data does not."""
    rng = np.random.default_rng(1)
    poisoned = rng.permutation(tiny_images.labels)
    assert (poisoned != tiny_images.labels).mean() > 0.5

    def run(method, labels):
        data = ImageSet(tiny_images.images, labels)
        use = method != "sqakd"
        train = BatchLoader(data, 32, mean=(0.3,), std=(0.3,), shuffle=True, seed=0, with_labels=use)
        val = BatchLoader(data, 32, mean=(0.3,), std=(0.3,), with_labels=use)
        objective = build_objective(method, _student(teacher), teacher if method == "sqakd" else None)
        hist = Trainer(objective, train, TrainConfig(epochs=2, lr=1e-2, **FAST), val).fit()
        return objective.student.state_dict(), hist

    for method, same in (("sqakd", True), ("qat", False)):
        (a, ha), (b, hb) = run(method, tiny_images.labels), run(method, poisoned)
        assert all(torch.equal(a[k], b[k]) for k in a) is same, method
        assert (ha == hb) is same, method


class HalfSquare(Objective):
    """loss = w^2 / 2, so the gradient is w itself."""

    needs_teacher = False

    def forward(self, inputs, labels=None):
        return 0.5 * (self.student.weight**2).sum(), {}


def _two_steps(**cfg) -> float:
    student = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        student.weight.fill_(2.0)
    cfg = TrainConfig(epochs=1, lr=0.1, optimizer="sgd", progress=False, **cfg)
    # lr 0.1 then 0.05: the per-step cosine of 2 steps gives factors 1 and 0.5
    Trainer(HalfSquare(student, None), [torch.ones(1, 1)] * 2, cfg).fit()
    return float(student.weight.detach())


def test_sgd_momentum_and_nesterov_by_hand():
    # momentum: w1 = 2 - .1*2 = 1.8; buf = .9*2 + 1.8 = 3.6; w2 = 1.8 - .05*3.6 = 1.62
    assert _two_steps(momentum=0.9) == pytest.approx(1.62, abs=1e-6)
    # nesterov: d1 = 2 + .9*2 = 3.8 -> w1 = 1.62; buf = .9*2 + 1.62 = 3.42; d2 = 1.62 + .9*3.42 -> w2 = 1.62 - .05*4.698
    assert _two_steps(momentum=0.9, nesterov=True) == pytest.approx(1.3851, abs=1e-6)


def test_grad_clip_by_hand():
    assert _two_steps(momentum=0.0) == pytest.approx(2 - 0.2 - 0.05 * 1.8, abs=1e-6)
    # |g| = 2 then 1.95, both clipped to norm 0.5: w = 2 - .1*.5 - .05*.5
    assert _two_steps(momentum=0.0, grad_clip=0.5) == pytest.approx(1.925, abs=1e-5)


@pytest.mark.parametrize("dropout", [True, False])
def test_dropout_false_turns_off_the_students_dropout_only(teacher, tiny_images, make_loader, dropout):
    student = nn.Sequential(nn.Dropout(0.5), _student(teacher))
    teacher_with_dropout = nn.Sequential(nn.Dropout(0.5), teacher)
    objective = build_objective("sqakd", student, teacher_with_dropout)
    Trainer(objective, make_loader(tiny_images, labels=False), TrainConfig(epochs=1, dropout=dropout, **FAST))
    assert student[0].p == (0.5 if dropout else 0.0) and teacher_with_dropout[0].p == 0.5
    x = torch.ones(4, 1, 8, 8)
    student.train()
    assert torch.equal(student(x), student(x)) is not dropout  # train mode: random only while dropout is on

import math

import pytest
import torch

from qdistill.distill import LossBalance, build_objective
from qdistill.errors import ConfigError
from qdistill.train import TrainConfig
from qdistill.train.trainer import make_optimizer, param_groups

from .helpers import student_of, train_steps


def test_balance_starts_as_a_plain_sum_and_learns_log_sizes():
    bal = LossBalance(2)
    opt = torch.optim.Adam(bal.parameters(), lr=0.1)
    for _ in range(300):
        loss = bal([torch.tensor(0.5), torch.tensor(8.0)])
        opt.zero_grad()
        loss.backward()
        opt.step()
    s = bal.log_vars.detach()
    assert s[0] == pytest.approx(math.log(0.5), abs=0.05) and s[1] == pytest.approx(math.log(8.0), abs=0.05)


def test_balance_guard_keeps_weights_bounded_when_a_term_vanishes():
    bal = LossBalance(2, bound=3.0)
    opt = torch.optim.SGD(bal.parameters(), lr=10.0)
    for _ in range(200):
        loss = bal([torch.tensor(1e-12), torch.tensor(1e6)])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.isfinite(bal.log_vars).all() and bal.log_vars.abs().max() <= 3.0
    assert all(math.isfinite(w) for w in bal.weights())


@pytest.mark.parametrize("uses_labels", [False, True])
def test_gor_scalars_move_stay_finite_and_are_logged(teacher, batch, uses_labels):
    images, labels = batch
    objective = build_objective("gor", student_of(teacher, images), teacher, uses_labels=uses_labels)
    assert objective.uses_labels is uses_labels
    before = objective.balance.raw.detach().clone()
    losses = train_steps(objective, images, labels, 10, lr=5e-2)
    assert all(math.isfinite(v) for v in losses)
    assert not torch.equal(before, objective.balance.raw.detach())
    logs = objective.extra_logs()
    terms = ("ce", "kd") if uses_labels else ("kd", "feat")
    assert set(logs) == {f"gor_{k}_{t}" for k in ("s", "w") for t in terms}
    assert all(math.isfinite(v) for v in logs.values())
    assert "balance.raw" in objective.state_dict()


def test_gor_with_labels_refuses_label_free_data(teacher, batch):
    objective = build_objective("gor", student_of(teacher, batch[0]), teacher, uses_labels=True)
    with pytest.raises(ValueError, match="needs labels"):
        objective(batch[0])


def test_balance_lr_gives_the_scalars_their_own_group_and_step(teacher, batch):
    images, _ = batch
    cfg = TrainConfig(lr=1e-5, weight_decay=0.1)
    plain = build_objective("gor", student_of(teacher, images), teacher)
    assert all(g["lr"] in (cfg.lr, cfg.quant_lr or cfg.lr) for g in param_groups(plain, cfg))  # default: like weights
    objective = build_objective("gor", student_of(teacher, images), teacher, balance_lr=0.05)
    groups = param_groups(objective, cfg)
    own = [g for g in groups if any(p is objective.balance.raw for p in g["params"])]
    assert len(own) == 1 and own[0]["lr"] == 0.05 and own[0]["weight_decay"] == 0.0 and len(own[0]["params"]) == 1
    opt = make_optimizer(groups, cfg)
    loss, _ = objective(images)
    loss.backward()
    opt.step()
    # Adam's first step is lr * sign(grad): each scalar moves 0.05 (b * tanh(r / b) ~ r near 0)
    assert objective.balance.raw.detach().abs().tolist() == pytest.approx([0.05, 0.05], rel=1e-3)
    with pytest.raises(ConfigError, match="balance_lr"):
        build_objective("gor", student_of(teacher, images), teacher, balance_lr=0.0)

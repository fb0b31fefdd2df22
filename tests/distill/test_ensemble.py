import pytest
import torch
import torch.nn.functional as F

from qdistill import QuantConfig, create_model
from qdistill.distill import TeacherEnsemble, build_objective
from qdistill.distill.student import make_student

from .helpers import train_steps


def _resnets():
    torch.manual_seed(0)
    return [create_model(name, num_classes=10, in_channels=1).eval() for name in ("resnet32", "resnet56")]


def test_pseudo_logits_reproduce_the_mean_of_softened_probabilities():
    deeper = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    members = [torch.nn.Linear(5, 4), deeper]
    x = torch.randn(6, 5)
    ens = TeacherEnsemble(members, temperature=3.0)
    expected = torch.stack([F.softmax(m(x) / 3.0, dim=1) for m in members]).mean(0)
    assert torch.allclose(F.softmax(ens(x) / 3.0, dim=1), expected, atol=1e-6)
    weighted = TeacherEnsemble(members, "weighted", [3.0, 1.0], temperature=3.0)
    expected = 0.75 * F.softmax(members[0](x) / 3, 1) + 0.25 * F.softmax(members[1](x) / 3, 1)
    assert torch.allclose(F.softmax(weighted(x) / 3.0, dim=1), expected, atol=1e-6)


def test_confidence_weights_are_per_sample_and_sum_to_one():
    ens = TeacherEnsemble([torch.nn.Identity(), torch.nn.Identity()], "confidence")
    logits = torch.stack([torch.tensor([[9.0, 0.0], [0.0, 0.1]]), torch.tensor([[0.0, 0.1], [9.0, 0.0]])])
    w = ens.member_weights(logits)
    assert torch.allclose(w.sum(0), torch.ones(2, 1))
    assert w[0, 0] > w[1, 0] and w[1, 1] > w[0, 1]


def test_bad_ensemble_settings_fail_clearly():
    with pytest.raises(ValueError, match="weights"):
        TeacherEnsemble([torch.nn.Identity()], "weighted")
    with pytest.raises(ValueError, match="combine"):
        TeacherEnsemble([torch.nn.Identity()], "median")


@pytest.mark.parametrize("combine", ["mean", "confidence"])
def test_ekd_with_two_different_architectures_trains(combine):
    images, _ = torch.randn(8, 1, 8, 8), None
    r32, r56 = _resnets()
    student = make_student(
        create_model("resnet20", num_classes=10, in_channels=1),
        QuantConfig(method="lsq", weight_bits=2, act_bits=2),
        images,
    )
    frozen = [p.detach().clone() for p in r56.parameters()]
    objective = build_objective("ekd", student, [r32, r56], combine=combine)
    losses = train_steps(objective, images, None, 6, lr=5e-3)
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    assert all(torch.equal(a, b) for a, b in zip(frozen, r56.parameters()))
    assert not any(k.startswith(("members", "teacher")) for k in objective.state_dict())
    assert len(objective.features._taps) == 3  # the student and one tap per teacher


def test_gor_balances_kl_and_features_from_an_ensemble(teacher, batch):
    images, _ = batch
    other = create_model("resnet20", num_classes=10, in_channels=1).eval()
    student = make_student(teacher, QuantConfig(method="ewgs", weight_bits=2, act_bits=2), images)
    objective = build_objective("gor", student, TeacherEnsemble([teacher, other]))
    losses = train_steps(objective, images, None, 4)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert len(objective.features.adaptors) == 2


class _TokenTable(torch.nn.Module):
    """``model(input_ids=...)`` -> dict with [B, T, V] logits."""

    def __init__(self) -> None:
        super().__init__()
        self.table = torch.nn.Embedding(6, 4)

    def forward(self, input_ids):
        return {"logits": self.table(input_ids)}


@pytest.mark.parametrize("combine", ["mean", "confidence"])
def test_ensemble_of_token_models_takes_dict_batches(combine):
    torch.manual_seed(0)
    members = [_TokenTable(), _TokenTable()]
    ids = torch.tensor([[1, 2, 5], [0, 3, 4]])
    ens = TeacherEnsemble(members, combine, temperature=2.0)
    probs = torch.stack([F.softmax(m.table(ids) / 2.0, dim=-1) for m in members])
    if combine == "mean":
        expected = probs.mean(0)
    else:
        conf = torch.stack([F.softmax(m.table(ids), dim=-1).amax(-1, keepdim=True) for m in members])
        expected = (conf / conf.sum(0) * probs).sum(0)
    assert torch.allclose(F.softmax(ens({"input_ids": ids}) / 2.0, dim=-1), expected, atol=1e-6)

"""Each KD baseline's loss against golden values from an independent numpy implementation of its
definition (fixtures/make_golden_losses.py), like torchdistill's pre-computed losses.

The objectives are built on the tiny smallcnn models; their learned modules are then replaced by
modules holding the fixture's weights, so `distill` is checked end to end: the loss form, the
reductions within a stage and the sum over stages.
"""

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from qdistill.distill import build_objective, kd_loss
from qdistill.distill.baselines import ContrastiveHead
from qdistill.distill.baselines.base import conv_bn

from .helpers import student_of

CASES = json.loads((Path(__file__).parent / "fixtures" / "golden_losses.json").read_text())["cases"]
PARAMETER_FREE = ("at", "nst", "sp", "fsp", "rkd")


def _t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


def _features(case: dict) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    return [_t(f) for f in case["inputs"]["s"]], [_t(f) for f in case["inputs"]["t"]]


def _linear(w, b) -> nn.Linear:
    lin = nn.Linear(len(w[0]), len(w))
    with torch.no_grad():
        lin.weight.copy_(_t(w))
        lin.bias.copy_(_t(b))
    return lin


def _conv1x1(w) -> nn.Conv2d:
    conv = nn.Conv2d(len(w[0]), len(w), 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(_t(w)[:, :, None, None])
    return conv


def _head(p: dict, tau: float) -> ContrastiveHead:
    head = ContrastiveHead(len(p["ws"][0]), len(p["wt"][0]), len(p["ws"]), len(p["qs"]), tau)
    head.embed_s, head.embed_t = _linear(p["ws"], p["bs"]), _linear(p["wt"], p["bt"])
    head.queue_s.copy_(_t(p["qs"]))
    head.queue_t.copy_(_t(p["qt"]))
    return head


def _with_fixture_modules(objective, name: str, case: dict):
    p = case.get("params", {})
    if name == "cc":
        objective.embed_s = nn.ModuleList([_linear(p["ws"], p["bs"])])
        objective.embed_t = nn.ModuleList([_linear(p["wt"], p["bt"])])
    elif name == "vid":
        objective.means = nn.ModuleList(
            nn.Sequential(_conv1x1(a), nn.ReLU(), _conv1x1(b), nn.ReLU(), _conv1x1(c)) for a, b, c in p["weights"]
        )
        objective.alphas = nn.ParameterList(nn.Parameter(_t(a)) for a in p["alphas"])
    elif name == "fitnet":
        reg = nn.Sequential(conv_bn(len(p["w"][0]), len(p["w"])), nn.ReLU())
        with torch.no_grad():
            reg[0][0].weight.copy_(_t(p["w"])[:, :, None, None])
        objective.regressors = nn.ModuleList([reg])
    elif name == "ft":  # identity paraphraser and translator: the factor loss and its reduction alone
        objective.encoders, objective.translators = nn.ModuleList([nn.Identity()]), nn.ModuleList([nn.Identity()])
    elif name in ("crd", "cktf"):
        objective.heads = nn.ModuleList(_head(h, case["tau"]) for h in p["heads"])
    return objective.eval()


@pytest.mark.parametrize("name", ["at", "nst", "sp", "fsp", "rkd", "cc", "vid", "fitnet", "ft", "crd", "cktf"])
def test_baseline_loss_equals_the_golden_value(teacher, batch, name):
    case = CASES[name]
    objective = build_objective(name, student_of(teacher, batch[0]), teacher)
    if name not in PARAMETER_FREE:
        _with_fixture_modules(objective, name, case)
    s, t = _features(case)
    value = objective.distill(s, t)
    assert float(value.detach()) == pytest.approx(case["expected"], rel=1e-5, abs=1e-7)


def test_fsp_initialisation_stage_is_the_fsp_sum_without_cross_entropy(teacher, batch):
    objective = build_objective("fsp", student_of(teacher, batch[0]), teacher).train()
    s, t = _features(CASES["fsp"])
    loss, logs = objective.loss(torch.tensor(123.0), s, t)
    assert float(loss) == pytest.approx(CASES["fsp"]["expected"], rel=1e-5) and "init" in logs


@pytest.mark.parametrize("case", ["kd_bc", "kd_btv_mask"])
def test_kd_loss_equals_the_golden_value(case):
    c = CASES[case]
    mask = torch.tensor(c["inputs"]["mask"]) if "mask" in c["inputs"] else None
    value = kd_loss(_t(c["inputs"]["s"]), _t(c["inputs"]["t"]), c["temperature"], mask)
    assert float(value) == pytest.approx(c["expected"], rel=1e-5)

"""GPTQ rounding against hand-computed cases: the error compensation, the per-group grid, dead inputs,
a transposed (Conv1D) weight, and the layers it refuses."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qdistill.errors import ConfigError
from qdistill.quant.config import QuantConfig
from qdistill.quant.gptq import gptq_round_, input_hessians
from qdistill.quant.modules import QConv2d, QLinear


def _qlinear(w: torch.Tensor, **cfg) -> QLinear:
    lin = nn.Linear(w.shape[1], w.shape[0], bias=False)
    with torch.no_grad():
        lin.weight.copy_(w)
    quant = {"method": "lsq", "weight_bits": 3, "act_bits": None, "per_channel": True, "weight_init": "minmax"}
    return QLinear.from_float(lin, QuantConfig(**(quant | cfg)))


def test_two_columns_by_hand() -> None:
    """Grid -4..3 (step 1, zero point 4); H = [[1, .5], [.5, 1]]. Rounding w1 = 0.4 to 0 leaves e = 0.4;
    the least-squares fix moves w2 by e * H12 / H22 = 0.2, so 1.4 -> 1.6 rounds to 2 (RTN: 1)."""
    q = _qlinear(torch.tensor([[0.4, 1.4]]))
    with torch.no_grad():
        q.weight_quant.step.fill_(1.0)
        q.weight_quant.zero_point.fill_(4.0)
    assert q.quant_weight().tolist() == [[0.0, 1.0]]  # round to nearest
    ratio = gptq_round_(q, torch.tensor([[1.0, 0.5], [0.5, 1.0]]), damp=1e-9)
    assert q.weight.tolist() == [[0.0, 2.0]]
    assert q.quant_weight().tolist() == [[0.0, 2.0]]  # on the grid: the quantizer keeps it
    # proxy loss d H d^T: GPTQ d = (0.4, -0.6) -> 0.28, RTN d = (0.4, 0.4) -> 0.48
    assert ratio == pytest.approx(0.28 / 0.48, rel=1e-6)


@pytest.mark.parametrize("cfg", [{}, {"per_channel": False, "group_size": 4}], ids=["channel", "group"])
def test_a_diagonal_hessian_gives_round_to_nearest_on_each_range(cfg) -> None:
    """Uncorrelated inputs: nothing to compensate, so GPTQ is RTN, each column on its own group's grid."""
    w = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
    w[:, 4:] *= 10  # the second group's range is ten times the first's
    q = _qlinear(w, **cfg)
    rtn = q.quant_weight().detach().clone()
    assert gptq_round_(q, torch.diag(torch.rand(8) + 0.5)) == pytest.approx(1.0)
    assert torch.equal(q.weight.detach(), rtn)


def test_correlated_inputs_lower_the_output_error_and_dead_inputs_get_zero() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4000, 6, generator=g) @ torch.randn(6, 32, generator=g) + 0.05 * torch.randn(4000, 32, generator=g)
    x[:, 3] = 0  # an input that never fires
    w = torch.randn(8, 32, generator=g)
    q = _qlinear(w, per_channel=False, group_size=16)
    rtn = q.quant_weight().detach().clone()
    ratio = gptq_round_(q, x.T @ x)
    out_err = ((x @ (w - q.weight.detach()).T) ** 2).sum()
    assert out_err < 0.3 * ((x @ (w - rtn).T) ** 2).sum()
    assert float(out_err) == pytest.approx(ratio * float(((x @ (w - rtn).T) ** 2).sum()), rel=1e-4)
    assert torch.all(q.weight[:, 3] == 0)
    assert torch.equal(q.quant_weight().detach(), q.weight.detach())


def test_input_hessians_sum_x_transpose_x_over_calls() -> None:
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    a, b = torch.randn(5, 3), torch.randn(2, 7, 3)
    with torch.no_grad(), input_hessians(net, ["0", "2"]) as h:
        net(a), net(b)
    rows = torch.cat([a, b.reshape(-1, 3)]).double()
    assert torch.allclose(h["0"], rows.T @ rows)
    hidden = torch.relu(net[0](rows.float())).double()
    assert torch.allclose(h["2"], hidden.T @ hidden, atol=1e-5)
    net(a)
    assert torch.allclose(h["0"], rows.T @ rows)  # hooks removed on exit


def test_a_transposed_conv1d_weight_is_written_back() -> None:
    from transformers.pytorch_utils import Conv1D

    from qdistill.quant.hf import QHFConv1D

    conv = Conv1D(2, 2)  # weight (in=2, out=2): y = x @ W
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[0.4, 0.0], [1.4, 0.0]]))  # output 0 reads (0.4, 1.4)
    q = QHFConv1D.from_float(conv, QuantConfig("lsq", weight_bits=3, act_bits=None, weight_init="minmax"))
    with torch.no_grad():
        q.weight_quant.step.fill_(1.0)
        q.weight_quant.zero_point.fill_(4.0)
    gptq_round_(q, torch.tensor([[1.0, 0.5], [0.5, 1.0]]), damp=1e-9)
    assert q.weight.tolist() == [[0.0, 0.0], [2.0, 0.0]]


def test_refuses_convs_transformed_grids_and_a_wrong_hessian() -> None:
    conv = QConv2d.from_float(nn.Conv2d(2, 2, 1), QuantConfig("lsq", weight_bits=3, act_bits=None))
    with pytest.raises(ConfigError, match="Linear weights"):
        gptq_round_(conv, torch.eye(2))
    with pytest.raises(ConfigError, match="does not match 4 weight inputs"):
        gptq_round_(_qlinear(torch.randn(2, 4)), torch.eye(3))
    lin = QLinear.from_float(nn.Linear(4, 2), QuantConfig("dorefa", weight_bits=3, act_bits=None))
    with pytest.raises(ConfigError, match="transform"):
        gptq_round_(lin, torch.eye(4))

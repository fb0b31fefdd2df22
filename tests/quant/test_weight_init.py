"""quant.weight_init: asymmetric min/max and MSE weight ranges, hand-computed levels and zero points."""

import copy

import pytest
import torch
from torch import nn

from qdistill.errors import ConfigError
from qdistill.quant import QuantConfig, convert, quantize
from qdistill.quant.range_init import SHRINKS


def _linear(weight: list[list[float]], method: str, **kw) -> nn.Module:
    w = torch.tensor(weight)
    lin = nn.Linear(w.shape[1], w.shape[0], bias=False)
    with torch.no_grad():
        lin.weight.copy_(w)
    cfg = {"method": method, "act_bits": None, "keep_first": False, "keep_last": False, **kw}
    return quantize(nn.Sequential(lin), QuantConfig(**cfg))


@pytest.mark.parametrize("method", ["lsq", "ewgs"])
def test_minmax_per_channel_levels_and_zero_points_by_hand(method):
    # row 0: [lo, hi] = [-1, 2], step (2 + 1) / 3 = 1, zero round(1 / 1) = 1
    # row 1: [lo, hi] = [-0.5, 1], step 0.5, zero 1; 0.4 -> round(1.8) = 2 -> 0.5, 0.1 -> round(1.2) = 1 -> 0
    net = _linear(
        [[-1.0, -0.2, 0.3, 2.0], [0.4, 1.0, -0.5, 0.1]], method, weight_bits=2, per_channel=True, weight_init="minmax"
    )
    expected = torch.tensor([[-1.0, 0.0, 0.0, 2.0], [0.5, 1.0, -0.5, 0.0]])
    assert torch.allclose(net[0].quant_weight(), expected, atol=1e-6)
    x = torch.randn(3, 4)
    ref = net(x)
    ints = convert(copy.deepcopy(net))[0]
    assert ints.weight_levels.dtype == torch.uint8
    assert ints.weight_levels.tolist() == [[0, 1, 1, 3], [2, 3, 0, 1]]
    assert ints.weight_zero_point.flatten().tolist() == [1.0, 1.0]
    assert torch.allclose(ints.weight_scale.flatten(), torch.tensor([1.0, 0.5]))
    assert torch.equal(ints(x), ref)  # the integer form is the fake-quant layer bit for bit


@pytest.mark.parametrize("method", ["lsq", "ewgs"])
def test_minmax_groups_hold_zero_and_get_their_own_zero_point(method):
    # group 0 [-0.3, 0, 0.5, 0.6]: step 0.3, zero 1; 0.5 -> round(2.67) = 3 -> 0.6
    # group 1 [0.3, 0.4, 0.9, 1.2]: all positive, the range still starts at 0: step 0.4, zero 0
    w = [[-0.3, 0.0, 0.5, 0.6, 0.3, 0.4, 0.9, 1.2]]
    net = _linear(w, method, weight_bits=2, group_size=4, weight_init="minmax")
    expected = torch.tensor([[-0.3, 0.0, 0.6, 0.6, 0.4, 0.4, 0.8, 1.2]])
    assert torch.allclose(net[0].quant_weight(), expected, atol=1e-6)
    ints = convert(copy.deepcopy(net))[0]
    assert ints.weight_levels.tolist() == [[0, 1, 3, 3], [1, 1, 2, 3]]
    assert ints.weight_zero_point.flatten().tolist() == [1.0, 0.0]
    assert torch.allclose(ints.weight_scale.flatten(), torch.tensor([0.3, 0.4]))
    assert torch.allclose(ints.dequantized_weight(), expected, atol=1e-6)


def _brute_force_mse(row: list[float], n: int) -> tuple[float, float]:
    """The shrink of least squared error, in plain Python (an independent computation)."""
    lo0, hi0 = min(min(row), 0.0), max(max(row), 0.0)
    best = None
    for p in SHRINKS:
        step = (p * hi0 - p * lo0) / n
        zero = min(max(round(-p * lo0 / step), 0), n)
        err = sum(((min(max(round(v / step + zero), 0), n) - zero) * step - v) ** 2 for v in row)
        if best is None or err < best[0]:
            best = (err, p)
    return best[1] * lo0, best[1] * hi0


def test_mse_range_is_the_shrink_of_least_error_per_channel():
    torch.manual_seed(0)
    w = torch.randn(4, 32)
    w[0, 3] = 6.0  # an outlier: a shrunk range rounds the other 31 weights more finely
    net = _linear(w.tolist(), "lsq", weight_bits=3, per_channel=True, weight_init="mse")
    q = net[0].weight_quant
    for i, row in enumerate(w.tolist()):
        lo, hi = _brute_force_mse(row, 7)
        assert q.step[i].item() == pytest.approx((hi - lo) / 7, rel=1e-5)
        assert q.zero_point[i].item() == round(-lo / ((hi - lo) / 7))
    minmax = _linear(w.tolist(), "lsq", weight_bits=3, per_channel=True, weight_init="minmax")
    assert q.step[0] < minmax[0].weight_quant.step[0]  # the outlier row is clipped
    err = ((net[0].quant_weight() - w) ** 2).sum(1)
    assert (err <= ((minmax[0].quant_weight() - w) ** 2).sum(1) + 1e-7).all()


@pytest.mark.parametrize("method", ["lsq", "ewgs"])
def test_asymmetric_ranges_still_learn_and_reload(method):
    torch.manual_seed(0)
    net = _linear(torch.randn(3, 8).tolist(), method, weight_bits=3, per_channel=True, weight_init="minmax")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    opt = torch.optim.SGD([p for n, p in net.named_parameters() if "weight_quant" in n], lr=0.1)
    x = torch.randn(16, 8)
    (net(x) - 1.0).pow(2).mean().backward()
    opt.step()
    moved = [k for k, v in net.state_dict().items() if "weight_quant" in k and not torch.equal(v, before[k])]
    assert moved  # the range (LSQ's step; EWGS's l, u, s) trains
    again = _linear(torch.zeros(3, 8).tolist(), method, weight_bits=3, per_channel=True, weight_init="minmax")
    again.load_state_dict(net.state_dict())  # LSQ's zero point is in the state dict
    assert torch.equal(again(x), net(x))


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"method": "dorefa", "weight_init": "minmax"}, "method 'dorefa' starts weights from default"),
        ({"method": "pact", "weight_init": "mse"}, "method 'pact' starts weights from default"),
        ({"method": "lsq", "weight_init": "max"}, "unknown 'max'"),
        ({"method": "lsq", "weight_init": "minmax", "weight_bits": 1}, "needs weight_bits >= 2"),
        ({"method": "lsq", "overrides": {"fc": {"method": "dorefa", "weight_init": "minmax"}}}, "dorefa"),
    ],
)
def test_weight_init_refused_where_it_is_undefined(kw, message):
    with pytest.raises(ConfigError, match=message):
        QuantConfig(**kw)

"""Weight ranges per tensor / channel / group and activation ranges per tensor / token, with hand levels."""

import pytest
import torch
from torch import nn

from qdistill.errors import ConfigError
from qdistill.quant import QUANTIZERS, QuantConfig, TokenQuantizer, quantize
from qdistill.quant.lsq import LSQQuantizer


def _three(first: nn.Module) -> nn.Sequential:
    return nn.Sequential(first, nn.Linear(2, 2), nn.Linear(2, 2))


def _only(layer: nn.Module, **kw) -> nn.Module:
    """``layer`` quantized (weights only unless act_bits is given), no layer kept float."""
    cfg = QuantConfig(
        **{"method": "lsq", "weight_bits": 3, "act_bits": None, "keep_first": False, "keep_last": False, **kw}
    )
    return quantize(nn.Sequential(layer), cfg)[0]


def test_lsq_weight_groups_along_the_input_dimension():
    lin = nn.Linear(4, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.26, -0.74, 3.4, 20.0], [1e3, -1e3, 0.3, 0.2]]))
    q = _only(lin, group_size=2)
    assert q.weight_quant.step.shape == (4, 1)  # (output 0, inputs 0-1), (0, 2-3), (1, 0-1), (1, 2-3)
    q.weight_quant.step.data.copy_(torch.tensor([[0.1], [1.0], [10.0], [0.5]]))
    expected = torch.tensor([[0.3, -0.4, 3.0, 3.0], [30.0, -40.0, 0.5, 0.0]])  # levels (-4..3) * step of each group
    assert torch.allclose(q.quant_weight(), expected)
    x = torch.randn(3, 4)
    assert torch.allclose(q(x), x @ expected.t() + lin.bias)


def test_conv_groups_hold_whole_kernels_of_group_size_input_channels():
    conv = nn.Conv2d(4, 1, (1, 2), bias=False)
    w = torch.arange(1.0, 9.0).view(1, 4, 1, 2)  # input channels 0-1 hold 1..4, channels 2-3 hold 5..8
    with torch.no_grad():
        conv.weight.copy_(w)
    q = _only(conv, group_size=2)
    q.weight_quant.step.data.copy_(torch.tensor([[1.0], [3.0]]))
    expected = torch.tensor([1.0, 2.0, 3.0, 3.0, 6.0, 6.0, 6.0, 9.0]).view(1, 4, 1, 2)  # min(round(w / s), 3) * s
    assert torch.allclose(q.quant_weight(), expected)


@pytest.mark.parametrize("method", ["dorefa", "pact"])
def test_dorefa_weight_groups_normalise_by_each_group_max(method):
    w = torch.tensor([[-0.9, 0.05, 0.3, 0.7], [0.01, -0.02, 2.0, -1.0]])
    lin = nn.Linear(4, 2)
    with torch.no_grad():
        lin.weight.copy_(w)
    q = _only(lin, method=method, weight_bits=2, group_size=2)
    t = torch.tanh(w).view(4, 2)
    expected = 2 * torch.round((t / (2 * t.abs().amax(1, keepdim=True)) + 0.5) * 3) / 3 - 1
    assert torch.allclose(q.quant_weight(), expected.view(2, 4))
    # the group (0.01, -0.02) keeps its shape instead of rounding to one level of the whole tensor
    assert torch.allclose(q.quant_weight()[1, :2], torch.tensor([1 / 3, -1.0]))


def test_ewgs_weight_groups_start_at_three_std_of_each_group():
    w = torch.tensor([[0.1, -0.3, 5.0, 1.0], [2.0, 2.5, -0.2, -0.6]])
    lin = nn.Linear(4, 2)
    with torch.no_grad():
        lin.weight.copy_(w)
    q = _only(lin, method="ewgs", group_size=2)
    stds = torch.tensor([w[0, :2].std(), w[0, 2:].std(), w[1, :2].std(), w[1, 2:].std()]).view(4, 1)
    assert torch.allclose(q.weight_quant.upper, 3 * stds) and torch.allclose(q.weight_quant.lower, -3 * stds)


def test_per_channel_weights_keep_one_range_per_output():
    q = _only(nn.Conv2d(2, 3, 3), per_channel=True)
    assert q.weight_quant.step.shape == (3, 1, 1, 1)


def test_a_group_size_that_does_not_divide_the_inputs_names_the_layer():
    with pytest.raises(ConfigError, match=r"layer '0' \(Linear\).*group_size 4 does not divide the 6 inputs"):
        quantize(_three(nn.Linear(6, 2)), QuantConfig(group_size=4, keep_first=False))


def test_a_quantizer_without_group_ranges_is_refused():
    class PerTensorOnly(LSQQuantizer):
        weight_granularities = ("tensor",)

    QUANTIZERS.register("per_tensor_test")(PerTensorOnly)
    try:
        with pytest.raises(ConfigError, match="per tensor, not per group"):
            quantize(_three(nn.Linear(2, 2)), QuantConfig(method="per_tensor_test", group_size=2, keep_first=False))
        quantize(_three(nn.Linear(2, 2)), QuantConfig(method="per_tensor_test", keep_first=False))
    finally:
        QUANTIZERS._items.pop("per_tensor_test")


def test_token_ranges_are_each_rows_min_and_max_with_zero_exact():
    q = TokenQuantizer(2)
    x = torch.tensor([[-1.0, 0.0, 0.4, 2.0], [0.0, 1.0, 3.0, 0.1], [-0.6, 2.4, 0.0, 1.2]])
    # row 0: [-1, 2], step 1, levels {-1, 0, 1, 2}; row 1: [0, 3], step 1, levels {0, 1, 2, 3};
    # row 2: [-0.6, 2.4] moved onto 0's grid: [-1, 2] (zero level round(0.6) = 1)
    expected = torch.tensor([[-1.0, 0.0, 0.0, 2.0], [0.0, 1.0, 3.0, 0.0], [-1.0, 2.0, 0.0, 1.0]])
    assert torch.equal(q(x), expected)
    assert list(q.parameters()) == []  # nothing learned


def test_token_ranges_follow_each_token_of_a_batch():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16) * torch.tensor([0.01, 1.0, 100.0]).view(1, 3, 1)
    y = TokenQuantizer(8)(x)
    delta = (x.amax(-1, keepdim=True).clamp_min(0) - x.amin(-1, keepdim=True).clamp_max(0)) / 255
    assert ((y - x).abs() <= delta / 2 + 1e-6 * x.abs()).all()  # nearest level of its own token's grid
    assert TokenQuantizer(8)(torch.zeros(2, 4)).abs().max() == 0


def test_token_activations_in_a_linear_and_refused_for_convs():
    lin = _only(nn.Linear(4, 2), act_bits=2, act_granularity="token")
    assert isinstance(lin.act_quant, TokenQuantizer)
    x = torch.tensor([[-1.0, 0.0, 0.4, 2.0]])
    assert torch.allclose(lin(x), torch.tensor([[-1.0, 0.0, 0.0, 2.0]]) @ lin.quant_weight().t() + lin.bias)
    net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.Conv2d(2, 2, 1), nn.Flatten(), nn.Linear(2, 2), nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="act_granularity 'token' needs features on the last dimension"):
        quantize(net, QuantConfig(act_granularity="token"))
    quantize(net, QuantConfig(act_granularity="token", overrides={"1": {"act_granularity": "tensor"}}))
    assert isinstance(net[3].act_quant, TokenQuantizer) and not isinstance(net[1].act_quant, TokenQuantizer)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"group_size": 0}, "quant.group_size"),
        ({"group_size": "8"}, "quant.group_size"),
        ({"act_granularity": "channel"}, "quant.act_granularity"),
        ({"per_channel": "yes"}, "quant.per_channel"),
        ({"quantize_embeddings": 1}, "quant.quantize_embeddings"),
    ],
)
def test_config_rejects_bad_granularity(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        QuantConfig(**kwargs)

"""`convert`: the integer form computes the fake-quant model's outputs bit for bit."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import qdistill
from qdistill.errors import ConfigError
from qdistill.quant import QuantConfig, calibrate, convert, quantize
from qdistill.quant.intform import InputGrid, IntConv, IntEmbedding, IntLinear, IntModule


def _logits(out):
    return out if isinstance(out, torch.Tensor) else out.logits


def _same_after_convert(model: nn.Module, *args, **kwargs) -> nn.Module:
    """Convert a copy of the (eval-mode) fake-quant ``model``; assert equal outputs; return the copy."""
    model.eval()
    converted = convert(copy.deepcopy(model))
    with torch.no_grad():
        fake, ints = _logits(model(*args, **kwargs)), _logits(converted(*args, **kwargs))
    assert torch.equal(fake, ints), f"max diff {(fake - ints).abs().max()}"
    assert not any(isinstance(m, qdistill.quant.QuantModule) for m in converted.modules())
    return converted


@pytest.mark.parametrize("setting", ["lsq:8", "lsq:4", "lsq:2", "ewgs:8", "ewgs:4", "ewgs:2"])
@pytest.mark.parametrize("name", qdistill.list_models())
def test_every_registered_model_converts_bit_exact(name, setting):
    method, bits = setting.split(":")
    torch.manual_seed(0)
    teacher = qdistill.create_model(name, num_classes=10, in_channels=3).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    cfg = QuantConfig(method=method, weight_bits=int(bits), act_bits=int(bits), per_channel=bits == "4")
    converted = _same_after_convert(qdistill.make_student(teacher, cfg, x), x)
    assert any(isinstance(m, IntConv) for m in converted.modules())


@pytest.mark.parametrize("method", ["pact", "lsq", "dorefa", "ewgs"])
@pytest.mark.parametrize("bits", [1, 2, 3, 8])
def test_every_method_and_signed_inputs(method, bits):
    """Tanh feeds signed inputs (zero-aligned grids, half-integer zeros at 1 bit)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 3))
    x = torch.randn(16, 6)
    quantize(net, QuantConfig(method=method, weight_bits=bits, act_bits=bits), calib_data=x)
    _same_after_convert(net, x)


def test_conv1d_embedding_groups_and_tokens():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(20, 8, padding_idx=0)
            self.conv = nn.Conv1d(8, 8, 3, padding=1, padding_mode="circular")
            self.mid = nn.Linear(8, 8)
            self.head = nn.Linear(8, 5)

        def forward(self, ids):
            h = self.conv(self.emb(ids).transpose(1, 2)).transpose(1, 2)
            return self.head(torch.relu(self.mid(h)))

    ids = torch.randint(0, 20, (3, 7), generator=torch.Generator().manual_seed(0))
    for cfg in (
        QuantConfig(method="lsq", weight_bits=4, act_bits=4, group_size=4, quantize_embeddings=True, keep_first=False),
        QuantConfig(
            method="ewgs",
            weight_bits=3,
            act_bits=8,
            group_size=2,
            quantize_embeddings=True,
            keep_first=False,
            exclude=["conv"],
            act_granularity="token",
        ),
    ):
        torch.manual_seed(0)
        converted = _same_after_convert(quantize(Net(), cfg, calib_data=ids), ids)
        assert isinstance(converted.emb, IntEmbedding) and converted.emb.input_grid.kind == "float"
        assert converted.mid.weight_scale.shape == (8 * 8 // cfg.group_size, 1)
        if cfg.act_granularity == "token":
            assert converted.mid.input_grid.kind == "token" and isinstance(converted.conv, nn.Conv1d)
        else:
            assert isinstance(converted.conv, IntConv) and converted.conv.dims == 1


def test_levels_scales_and_grid_by_hand():
    """LSQ 2-bit weights on the signed int8 grid, EWGS 2-bit weights as uint8 with zero 1.5."""
    lin = nn.Linear(4, 1, bias=False)
    q = quantize(
        nn.Sequential(lin, nn.ReLU(), nn.Linear(1, 1)),
        QuantConfig(method="lsq", weight_bits=2, act_bits=2, keep_first=False, keep_last=False),
    )
    layer = q[0]
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[-0.5, 0.05, 0.17, 0.9]]))
        layer.weight_quant.step.fill_(0.2)
        layer.act_quant.initialize(torch.tensor([1.0]))  # unsigned
        layer.act_quant.step.fill_(0.5)
    ints = layer.to_int()
    assert ints.weight_levels.dtype == torch.int8 and ints.weight_levels.tolist() == [[-2, 0, 1, 1]]
    assert float(ints.weight_scale) == pytest.approx(0.2) and float(ints.weight_zero_point) == 0.0
    g = ints.input_grid
    assert (g.kind, float(g.lo), float(g.hi), float(g.step), float(g.zero)) == ("tensor", 0.0, 1.5, 0.5, 0.0)
    assert g(torch.tensor([-1.0, 0.3, 0.8, 9.0])).tolist() == [0.0, 0.5, 1.0, 1.5]

    e = quantize(
        nn.Sequential(nn.Linear(4, 1, bias=False), nn.Linear(1, 1)),
        QuantConfig(method="ewgs", weight_bits=2, act_bits=None, keep_first=False, keep_last=False),
    )
    layer = e[0]
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[-0.9, -0.2, 0.3, 2.0]]))
        layer.weight_quant.lower.fill_(-1.0)
        layer.weight_quant.upper.fill_(1.0)
        layer.weight_quant.out_scale.fill_(0.75)
    ints = layer.to_int()
    assert ints.weight_levels.dtype == torch.uint8 and ints.weight_levels.tolist() == [[0, 1, 2, 3]]
    assert float(ints.weight_zero_point) == 1.5 and float(ints.weight_scale) == pytest.approx(0.5)
    assert ints.dequantized_weight().tolist() == [[-0.75, -0.25, 0.25, 0.75]] and ints.input_grid.kind == "float"


def test_to_float_is_a_plain_layer_with_the_quantized_weight():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 8)
    net = quantize(
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(64, 2)),
        QuantConfig(method="ewgs", weight_bits=2, act_bits=None, keep_first=False, keep_last=False),
        calib_data=x,
    )
    for m in (net[0], net[2], net[4]):
        plain = m.to_float()
        assert type(plain) in (nn.Conv2d, nn.Linear) and torch.equal(plain.weight, m.quant_weight())
        rows = plain.weight.flatten(1)  # W2 per channel: at most 4 values per output channel (float rows: 27+)
        assert all(len(set(r.tolist())) <= 4 < len(set(f.tolist())) for r, f in zip(rows, m.weight.flatten(1)))


def test_convert_errors_are_one_line_config_errors():
    with pytest.raises(ConfigError, match="no quantized layer"):
        convert(nn.Sequential(nn.Linear(2, 2)))
    net = quantize(
        nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)),
        QuantConfig(method="lsq", weight_bits=4, act_bits=4, keep_first=False, keep_last=False),
    )
    with pytest.raises(ConfigError, match=r"layer '0'.*not calibrated"):
        convert(net)
    calibrate(net, torch.randn(4, 2))
    converted = convert(net)
    assert isinstance(converted[0], IntModule) and "0.weight" not in converted.state_dict()
    assert isinstance(InputGrid.of(None), InputGrid)


T = pytest.importorskip("transformers")
from tiny_transformers import gpt2  # noqa: E402


def test_tiny_bert_converts_bit_exact():
    torch.manual_seed(0)
    cfg = T.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=100, num_labels=3
    )
    batch = {"input_ids": torch.randint(0, 100, (2, 7)), "attention_mask": torch.ones(2, 7, dtype=torch.long)}
    for qcfg in (
        QuantConfig(method="ewgs", weight_bits=4, act_bits=4, group_size=16),
        QuantConfig(method="lsq", weight_bits=2, act_bits=8, per_channel=True, act_granularity="token"),
    ):
        model = quantize(T.BertForSequenceClassification(cfg), qcfg, calib_data=batch)
        converted = _same_after_convert(model, **batch)
        assert (
            sum(isinstance(m, IntLinear) for m in converted.modules()) == 13
        )  # 6 Linears per layer and the pooler (classifier float)


def test_tiny_gpt2_conv1d_converts_bit_exact_and_stays_tied():
    ids = torch.randint(0, 100, (2, 5), generator=torch.Generator().manual_seed(0))
    for qcfg in (
        QuantConfig(method="lsq", weight_bits=4, act_bits=8, group_size=16, act_granularity="token"),
        QuantConfig(
            method="ewgs",
            weight_bits=2,
            act_bits=2,
            per_channel=True,
            quantize_embeddings=True,
            include=["lm_head", "transformer.wte"],
        ),
    ):
        model = quantize(gpt2(), qcfg, calib_data=ids)
        converted = _same_after_convert(model, ids)
        assert sum(isinstance(m, IntLinear) for m in converted.modules()) >= 8  # the 8 Conv1D layers

"""Quantized models trace with PyTorch 2: torch.export equals eager, torch.compile(fullgraph=True) has no break."""

import pytest
import torch
from torch import nn

import qdistill
from qdistill.quant import QuantConfig, quantize

T = pytest.importorskip("transformers")
from tiny_transformers import gpt2 as tiny_gpt2  # noqa: E402


def resnet20():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    model = quantize(
        qdistill.create_model("resnet20"), QuantConfig(method="ewgs", weight_bits=4, act_bits=4), calib_data=x
    )
    return model.eval(), (x,), {}


def bert():
    torch.manual_seed(0)
    cfg = T.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=100, num_labels=3
    )
    batch = {"input_ids": torch.randint(0, 100, (2, 7)), "attention_mask": torch.ones(2, 7, dtype=torch.long)}
    qcfg = QuantConfig(
        method="ewgs", weight_bits=4, act_bits=4, group_size=16
    )  # signed EWGS inputs: a tensor zero point
    return quantize(T.BertForSequenceClassification(cfg), qcfg, calib_data=batch).eval(), (), batch


def gpt2():
    model = tiny_gpt2()
    ids = torch.randint(0, 100, (2, 5))
    qcfg = QuantConfig(method="lsq", weight_bits=4, act_bits=8, per_channel=True, act_granularity="token")
    return quantize(model, qcfg, calib_data=ids).eval(), (ids,), {}


def _logits(out):
    return out if isinstance(out, torch.Tensor) else out.logits if hasattr(out, "logits") else out[0]


@pytest.mark.parametrize("build", [resnet20, bert, gpt2])
def test_torch_export_matches_eager(build):
    model, args, kwargs = build()
    with torch.no_grad():
        eager = _logits(model(*args, **kwargs))
        exported = _logits(torch.export.export(model, args, kwargs).module()(*args, **kwargs))
    assert torch.equal(exported, eager)


@pytest.mark.parametrize("build", [resnet20, bert, gpt2])
def test_compile_fullgraph_has_no_graph_break(build):
    model, args, kwargs = build()
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="eager")  # a graph break raises here
    with torch.no_grad():
        assert torch.equal(_logits(compiled(*args, **kwargs)), _logits(model(*args, **kwargs)))


def test_compiled_training_step_gives_the_eager_gradients():
    torch.manual_seed(0)
    x = torch.randn(8, 6)
    net = quantize(
        nn.Sequential(nn.Linear(6, 6), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 6), nn.Linear(6, 2)),
        QuantConfig(method="ewgs", weight_bits=3, act_bits=3),
        calib_data=x,
    )

    def grads(model):
        net.zero_grad()
        model(x).square().sum().backward()
        return [p.grad.clone() for p in net.parameters() if p.grad is not None]

    eager = grads(net)
    torch._dynamo.reset()
    compiled = grads(torch.compile(net, fullgraph=True, backend="aot_eager"))
    assert len(compiled) == len(eager) and all(torch.allclose(a, b, atol=1e-6) for a, b in zip(eager, compiled))

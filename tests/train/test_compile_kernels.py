"""use_compiled_kernels: one compile serves every layer (plain tensors, dynamic shapes), same numbers as eager."""

import pytest
import torch
from torch import nn

from qdistill.quant import QuantConfig, quantize
from qdistill.quant.fake_quant import compiled_kernels_enabled, use_compiled_kernels


def _net():
    torch.manual_seed(0)
    layers = [
        nn.Conv2d(3, 8, 3),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3),
        nn.ReLU(),
        nn.Conv2d(16, 12, 1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(12 * 4 * 4, 16),
        nn.Tanh(),
        nn.Linear(16, 5),
    ]
    return quantize(
        nn.Sequential(*layers),
        QuantConfig(method="ewgs", weight_bits=2, act_bits=2, keep_first=False, keep_last=False),
        calib_data=torch.randn(4, 3, 8, 8),
    )


def _grads(net, batch):
    net.zero_grad()
    x = torch.randn(batch, 3, 8, 8, generator=torch.Generator().manual_seed(batch))
    out = net(x)
    out.square().sum().backward()
    return [out.detach()] + [p.grad.clone() for p in net.parameters()]


@pytest.fixture
def compiled_eager_backend():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    use_compiled_kernels(True, backend="eager")  # dynamo's guards and graphs without code generation
    yield torch._dynamo.utils.counters
    use_compiled_kernels(False)
    torch._dynamo.reset()


def test_one_compile_serves_every_layer_and_batch_size(compiled_eager_backend):
    net = _net()
    use_compiled_kernels(False)
    eager = [_grads(net, b) for b in (4, 6, 9)]
    use_compiled_kernels(True, backend="eager")
    assert compiled_kernels_enabled()
    compiled = [_grads(net, b) for b in (4, 6, 9)]
    for e, c in zip(eager, compiled):
        assert all(torch.allclose(a, b, rtol=0, atol=1e-6) for a, b in zip(e, c))
    # 10 quantizers (conv and linear weights and inputs) and 3 batch sizes: a few graphs per kernel (rank
    # patterns), not one per layer and batch size (handed Parameters it made 16: both kernels at dynamo's limit)
    stats = compiled_eager_backend["stats"]
    assert 2 <= stats["unique_graphs"] <= 6, dict(stats)


def test_the_switch_reads_back():
    use_compiled_kernels(False)
    assert not compiled_kernels_enabled()

import math

import pytest
import torch

from qdistill.quant import QUANTIZERS, DoReFaQuantizer, EWGSQuantizer, LSQQuantizer, PACTQuantizer

BITS = [1, 2, 3, 4, 8]


def _act(cls, bits, x_init, **kw):
    q = cls(bits, is_weight=False, **kw)
    q.initialize(x_init)
    return q


@pytest.mark.parametrize("bits", BITS)
def test_pact_activation_levels(bits):
    q = _act(PACTQuantizer, bits, torch.rand(100))
    q.alpha.data.fill_(2.0)
    y = q(torch.linspace(-1, 5, 4001))
    n = 2**bits - 1
    assert torch.allclose(torch.unique(y), torch.arange(n + 1) * 2.0 / n)


@pytest.mark.parametrize("bits", BITS)
def test_dorefa_activation_levels(bits):
    q = _act(DoReFaQuantizer, bits, torch.rand(10))
    y = q(torch.linspace(-1, 3, 4001))
    assert torch.allclose(torch.unique(y), torch.arange(2**bits) / (2**bits - 1))


@pytest.mark.parametrize("bits", BITS)
def test_lsq_activation_levels(bits):
    q = _act(LSQQuantizer, bits, torch.rand(100))
    q.step.data.fill_(0.25)
    y = q(torch.linspace(-1, 100, 40001))
    assert torch.allclose(torch.unique(y), torch.arange(2**bits) * 0.25)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_lsq_signed_weight_levels(bits):
    q = LSQQuantizer(bits, is_weight=True)
    q.initialize(torch.randn(100))
    q.step.data.fill_(0.5)
    y = q(torch.linspace(-500, 500, 40001))
    half = 2 ** (bits - 1)
    assert torch.allclose(torch.unique(y), torch.arange(-half, half) * 0.5)


@pytest.mark.parametrize("method", ["lsq", "ewgs"])
def test_binary_weights_are_plus_minus_scale(method):
    q = QUANTIZERS.get(method)(1, is_weight=True)
    w = torch.randn(200)
    q.initialize(w)
    y = q(w)
    vals = torch.unique(y)
    assert len(vals) == 2 and torch.isclose(vals[0], -vals[1])
    assert torch.equal(torch.sign(y), torch.sign(w))


def test_dorefa_binary_weights_use_mean_abs():
    w = torch.randn(200)
    q = DoReFaQuantizer(1, is_weight=True)
    y = q(w)
    assert torch.allclose(torch.unique(y), torch.tensor([-1.0, 1.0]) * w.abs().mean())


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_dorefa_weight_levels_hand_computed(bits):
    w = torch.tensor([-0.9, -0.2, 0.05, 0.3, 0.7])
    q = DoReFaQuantizer(bits, is_weight=True)
    n = 2**bits - 1
    t = torch.tanh(w)
    expected = 2 * torch.round((t / (2 * t.abs().max()) + 0.5) * n) / n - 1
    assert torch.allclose(q(w), expected)


@pytest.mark.parametrize("method", ["pact", "lsq", "dorefa", "ewgs"])
def test_binary_unsigned_activations_are_zero_or_scale(method):
    q = _act(QUANTIZERS.get(method), 1, torch.rand(1000))
    y = q(torch.rand(1000) * 3)
    assert len(torch.unique(y)) == 2 and torch.unique(y)[0] == 0


@pytest.mark.parametrize("method", ["pact", "lsq", "dorefa", "ewgs"])
def test_activations_unsigned_after_relu_and_signed_otherwise(method):
    cls = QUANTIZERS.get(method)
    assert not bool(_act(cls, 2, torch.rand(100)).signed)
    q = _act(cls, 2, torch.randn(100))
    assert bool(q.signed)
    assert (q(torch.randn(1000)) < 0).any()


def test_ewgs_levels_and_hand_computed_output():
    q = EWGSQuantizer(2, is_weight=False)
    q.initialize(torch.rand(10))
    q.lower.data.fill_(0.0)
    q.upper.data.fill_(2.0)
    q.out_scale.data.fill_(3.0)
    x = torch.tensor([-1.0, 0.2, 0.4, 0.9, 1.5, 4.0])
    x_n = (x / 2).clamp(0, 1)
    assert torch.allclose(q(x), 3.0 * torch.round(x_n * 3) / 3)


def test_ewgs_weight_init_is_three_std():
    w = torch.randn(5000)
    q = EWGSQuantizer(2, is_weight=True)
    q.initialize(w)
    assert q.upper.item() == pytest.approx(3 * w.std().item(), rel=1e-5)
    assert q.lower.item() == pytest.approx(-3 * w.std().item(), rel=1e-5)


def test_pact_alpha_gets_gradient_only_from_clipped():
    q = _act(PACTQuantizer, 2, torch.rand(100))
    q.alpha.data.fill_(1.0)
    x = torch.tensor([0.1, 0.5, 0.9, 1.5, 3.0])
    q(x).backward(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert q.alpha.grad.item() == pytest.approx(9.0)


def test_lsq_step_gradient_matches_paper():
    q = _act(LSQQuantizer, 2, torch.rand(100))
    s = 0.5
    q.step.data.fill_(s)
    x = torch.tensor([-0.3, 0.1, 0.62, 0.9, 2.5])
    q(x).backward(torch.ones(5))
    qp = 3
    v = x / s
    per = torch.where(v <= 0, torch.zeros(5), torch.where(v >= qp, torch.full((5,), float(qp)), torch.round(v) - v))
    expected = per.sum() / math.sqrt(x.numel() * qp)
    assert q.step.grad.item() == pytest.approx(expected.item(), rel=1e-5)


def test_lsq_init():
    x = torch.rand(1000)
    q = _act(LSQQuantizer, 4, x)
    assert q.step.item() == pytest.approx(2 * x.abs().mean().item() / math.sqrt(15), rel=1e-5)


@pytest.mark.parametrize("method", ["pact", "lsq", "ewgs"])
def test_learnable_ranges_receive_nonzero_gradients(method):
    torch.manual_seed(0)
    q = _act(QUANTIZERS.get(method), 2, torch.rand(256) * 2)
    x = torch.rand(256) * 4
    (q(x) - x).pow(2).mean().backward()
    grads = {n: p.grad for n, p in q.named_parameters()}
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads.values()), grads


def test_per_channel_weight_ranges():
    w = torch.randn(4, 3, 3, 3) * torch.tensor([0.1, 1.0, 5.0, 10.0]).view(4, 1, 1, 1)
    q = LSQQuantizer(4, is_weight=True, channel_shape=(4, 1, 1, 1))
    q.initialize(w)
    assert q.step.shape == (4, 1, 1, 1)
    assert q.step[0] < q.step[3]
    y = q(w)
    y.sum().backward()
    assert q.step.grad.shape == (4, 1, 1, 1)


def test_projection_equals_quantizer_output_and_is_detached():
    for name in QUANTIZERS.names():
        q = _act(QUANTIZERS.get(name), 2, torch.rand(100))
        f = (torch.rand(50) * 2).requires_grad_()
        p = q.project(f)
        assert torch.equal(p, q(f).detach()) and not p.requires_grad


def test_invalid_bits():
    with pytest.raises(ValueError, match="bits"):
        LSQQuantizer(9, is_weight=True)


@pytest.mark.parametrize("method", ["pact", "ewgs", "lsq"])
def test_one_bit_activation_init_keeps_units_alive(method):
    """A 3-sigma range at 1 bit rounds almost everything to zero; the init must not."""
    torch.manual_seed(0)
    x = torch.randn(4096).relu()
    q = _act(QUANTIZERS.get(method), 1, x)
    assert (q(x) > 0).float().mean() > 0.2

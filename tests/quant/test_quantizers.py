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


def _ewgs_act(lower: float, upper: float, out_scale: float) -> EWGSQuantizer:
    """A 2-bit unsigned activation quantizer with hand-set l, u, s."""
    q = EWGSQuantizer(2, is_weight=False)
    q.initialize(torch.rand(10))
    q.lower.data.fill_(lower)
    q.upper.data.fill_(upper)
    q.out_scale.data.fill_(out_scale)
    return q


def test_ewgs_levels_and_hand_computed_output():
    q = _ewgs_act(0.0, 2.0, 3.0)
    x = torch.tensor([-1.0, 0.2, 0.4, 0.9, 1.5, 4.0])
    x_n = (x / 2).clamp(0, 1)
    assert torch.allclose(q(x), 3.0 * torch.round(x_n * 3) / 3)


def test_ewgs_collapsed_range_is_a_step_not_nan():
    """Training can push u below l; at l = 1 in float32, l + 1e-12 == l, and x = l was 0 / 0."""
    q = _ewgs_act(1.0, 0.5, 1.0)
    x = torch.tensor([0.0, 0.9, 1.0, 1.5, 3.0], requires_grad=True)
    y = q(x)
    assert y.tolist() == pytest.approx([0.0, 0.0, 0.0, 1.0, 1.0], abs=1e-6)  # a step at l, to out_scale = 1
    y.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(q.lower.grad) and torch.isfinite(q.upper.grad)


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


@pytest.mark.parametrize(
    "method, setup, expected",
    [  # 2-bit unsigned grids set by hand; inputs 0.1, 0.9, 5.0
        ("pact", lambda q: q.alpha.data.fill_(2.0), [0.0, 2 / 3, 2.0]),  # {0, 2/3, 4/3, 2}
        ("lsq", lambda q: q.step.data.fill_(0.5), [0.0, 1.0, 1.5]),  # {0, .5, 1, 1.5}
        ("dorefa", lambda q: None, [0.0, 1.0, 1.0]),  # {0, 1/3, 2/3, 1}
        (
            "ewgs",
            lambda q: (q.lower.data.fill_(0.0), q.upper.data.fill_(2.0), q.out_scale.data.fill_(3.0)),
            [0.0, 1.0, 3.0],
        ),
    ],
)
def test_projection_lands_on_hand_computed_levels_and_is_detached(method, setup, expected):
    q = _act(QUANTIZERS.get(method), 2, torch.rand(100))
    setup(q)
    p = q.project(torch.tensor([0.1, 0.9, 5.0], requires_grad=True))
    assert torch.allclose(p, torch.tensor(expected)) and not p.requires_grad


def test_projection_needs_an_initialised_quantizer():
    with pytest.raises(RuntimeError, match="not initialised"):
        LSQQuantizer(2, is_weight=False).project(torch.zeros(3))


# Signed activations: x = 0 must stay exactly 0 (an integer zero point) and the range ends map to the
# grid's ends. Each row: quantizer, bits, hand-set range, inputs, hand-computed outputs.
_EWGS_8 = 5.98 / 255  # l, u = -0.28, 5.7: delta = (u - l) / 255, zero level round(0.28 / delta) = 12


def _ewgs(lo, hi, s):
    return lambda q: (q.lower.data.fill_(lo), q.upper.data.fill_(hi), q.out_scale.data.fill_(s))


@pytest.mark.parametrize(
    "method, bits, setup, x, expected",
    [
        # LSQ: (k - 2^(b-1)) * s
        (
            "lsq",
            2,
            lambda q: q.step.data.fill_(0.5),
            [0, -5, 5, 0.2, 0.3, -0.74, -0.76],
            [0, -1, 0.5, 0, 0.5, -0.5, -1],
        ),
        ("lsq", 8, lambda q: q.step.data.fill_(0.1), [0, -100, 100, 0.26, -0.04], [0, -12.8, 12.7, 0.3, 0]),
        ("lsq", 1, lambda q: q.step.data.fill_(0.5), [0.01, -0.01, 3, -3], [0.5, -0.5, 0.5, -0.5]),
        # PACT: clip to [-a, a], levels (k - 2^(b-1)) * a / 2^(b-1)
        ("pact", 2, lambda q: q.alpha.data.fill_(2.0), [0, -5, 5, 0.4, 0.6, -1.4, -1.6], [0, -2, 1, 0, 1, -1, -2]),
        ("pact", 8, lambda q: q.alpha.data.fill_(2.0), [0, -5, 5, 0.02], [0, -2, 127 / 64, 1 / 64]),
        ("pact", 1, lambda q: q.alpha.data.fill_(2.0), [0.1, -0.1, 9], [2, -2, 2]),
        # DoReFa: the same grid with a = 1
        ("dorefa", 2, lambda q: None, [0, -3, 3, 0.2, 0.3, -0.7], [0, -1, 0.5, 0, 0.5, -0.5]),
        ("dorefa", 8, lambda q: None, [0, -3, 3, 0.5], [0, -1, 127 / 128, 0.5]),
        ("dorefa", 1, lambda q: None, [0.1, -0.1], [1, -1]),
        # EWGS: [l, u] moved onto a grid holding 0, output (k - z) * s / (2^b - 1)
        ("ewgs", 2, _ewgs(-0.8, 2.2, 3.0), [0, -0.9, 2.1, 0.4, 0.6, -3, 5], [0, -1, 2, 0, 1, -1, 2]),
        ("ewgs", 2, _ewgs(-0.8, 2.2, 6.0), [0, -0.9, 2.1, 0.6], [0, -2, 4, 2]),  # output scale doubles
        (
            "ewgs",
            8,
            _ewgs(-0.28, 5.7, 5.98),
            [0, -0.28, 5.7, 1.0, -1, 10],
            [0, -12 * _EWGS_8, 243 * _EWGS_8, 43 * _EWGS_8, -12 * _EWGS_8, 243 * _EWGS_8],
        ),
        ("ewgs", 1, _ewgs(-1.0, 3.0, 2.0), [0.1, -0.1, 5, -5], [1, -1, 1, -1]),  # {-s/2, s/2}, split at 0
    ],
)
def test_signed_activation_levels_hand_computed(method, bits, setup, x, expected):
    q = _act(QUANTIZERS.get(method), bits, torch.randn(100))
    assert q.signed
    setup(q)
    y = q(torch.tensor(x, dtype=torch.float32))
    assert torch.allclose(y, torch.tensor(expected, dtype=torch.float32), atol=1e-6), y
    if bits > 1:
        assert y[0].item() == 0.0  # exactly


@pytest.mark.parametrize("method", ["pact", "lsq", "dorefa", "ewgs"])
def test_calibrated_signed_8_bit_keeps_zero_and_rounds_to_nearest(method):
    """The issue's case: calibrated on [-0.28, 5.7], EWGS returned -2.47 for 0.0 and -1.48 for 1.0."""
    x = torch.linspace(-0.28, 5.7, 1000) if method != "dorefa" else torch.linspace(-0.28, 0.99, 1000)
    q = _act(QUANTIZERS.get(method), 8, x)
    y = q(x)
    grid = torch.unique(y)
    delta = (grid[1:] - grid[:-1]).min()
    assert q(torch.zeros(1)).item() == 0.0
    assert (y - x).abs().max() <= delta / 2 + 1e-5  # every in-range value to its nearest level


def test_ewgs_signed_zero_point_follows_the_learned_range_but_gets_no_gradient():
    q = _act(EWGSQuantizer, 2, torch.randn(100))
    _ewgs(-0.8, 2.2, 3.0)(q)
    x = torch.tensor([-0.5, 0.3, 1.2, 1.9])
    q(x).sum().backward()
    # lo' = -z * d, hi' = (n - z) * d with d = (u - l) / 3 and z = 1 fixed: only d carries gradient,
    # so dL/dl = -dL/du (the grid moves by its width only).
    assert torch.isclose(q.lower.grad, -q.upper.grad)
    _ewgs(-1.6, 1.4, 3.0)(q)  # z = round(1.6) = 2: levels {-2, -1, 0, 1}
    assert torch.allclose(q(torch.tensor([-1.7, 0.0, 1.3])), torch.tensor([-2.0, 0.0, 1.0]))


@pytest.mark.parametrize("method", ["pact", "lsq", "dorefa", "ewgs"])
def test_bf16_input_is_quantized_in_fp32(method):
    torch.manual_seed(0)
    q = _act(QUANTIZERS.get(method), 8, torch.randn(4096))
    x = torch.randn(4096).bfloat16()
    y = q(x)
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, q(x.float()).bfloat16())


def test_default_backward_comes_from_the_quantizer_class():
    from qdistill.quant import QuantConfig

    assert [QuantConfig(method=m).resolved_backward for m in ("ewgs", "lsq", "pact", "dorefa")] == [
        "ewgs",
        "ste",
        "ste",
        "ste",
    ]
    assert QuantConfig(method="ewgs", backward="ste").resolved_backward == "ste"


def test_state_dict_keeps_calibration_state_and_reads_old_buffers(tmp_path):
    a = _act(LSQQuantizer, 4, torch.randn(100))
    assert all(isinstance(v, torch.Tensor) for v in a.state_dict().values())  # tensors only
    torch.save(a.state_dict(), tmp_path / "q.pt")
    b = LSQQuantizer(4, is_weight=False)
    b.load_state_dict(torch.load(tmp_path / "q.pt", weights_only=True))
    assert b.initialized and b.signed
    old = {
        "coef": torch.tensor(1e-3),
        "step": torch.tensor(0.3),
        "signed": torch.tensor(True),
        "initialized": torch.tensor(True),
    }
    c = LSQQuantizer(4, is_weight=False)
    c.load_state_dict(old)  # strict: the old buffers are consumed, no missing _extra_state
    assert c.initialized and c.signed and c.step.item() == pytest.approx(0.3)
    assert c(torch.tensor([0.0, -0.31, 10.0])).tolist() == pytest.approx([0.0, -0.3, 2.1])


def test_custom_quantizer_registered_by_name_is_used_by_quantize():
    from torch import nn

    from qdistill.quant import Interval, QuantConfig, Quantizer, quantize

    class Halves(Quantizer):
        """Rounds to multiples of 0.5 in [-1, 1] (levels = 2^bits, here 5 used of 8)."""

        def init_from(self, x):
            return None

        def interval(self, x):
            one = x.new_ones(())
            return Interval(x, -one, one * (0.5 * self.n - 1), one * 0.5, 2.0)

    QUANTIZERS.register("halves_test")(Halves)
    try:
        net = quantize(
            nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2)),
            QuantConfig(method="halves_test", weight_bits=3, act_bits=3),
        )
        assert isinstance(net[1].weight_quant, Halves) and net[1].weight_quant.backward_mode == "ste"
        assert torch.allclose(
            net[1].act_quant(torch.tensor([-3.0, -0.2, 0.3, 0.8, 9.0])), torch.tensor([-1.0, 0.0, 0.5, 1.0, 2.5])
        )
    finally:
        QUANTIZERS._items.pop("halves_test")


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


@pytest.mark.parametrize("method", ["pact", "lsq", "ewgs"])
@pytest.mark.parametrize("signed", [False, True])
def test_tiny_activations_keep_their_scale(method, signed):
    """A random-init MobileNetV2 (BN at its initial statistics) has 1e-7 activations; an absolute
    range floor of 1e-4 (calibration) or 1e-6 (EWGS interval) rounded them all to zero."""
    torch.manual_seed(0)
    x = (torch.randn(4096) if signed else torch.rand(4096)) * 1e-7
    q = _act(QUANTIZERS.get(method), 8, x)
    assert (q(x) - x).norm() < 0.1 * x.norm()  # all zero before: an error of 100%

import pytest
import torch
from torch import nn

from qdistill.quant import QConv2d, QLinear, QuantConfig, calibrate, named_quantizers, quantize, update_ewgs_delta


def tiny_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 8),
        nn.ReLU(),
        nn.Linear(8, 3),
    )


def test_first_and_last_layers_stay_full_precision():
    net = quantize(tiny_net(), QuantConfig(method="lsq"))
    assert type(net[0]) is nn.Conv2d and type(net[10]) is nn.Linear
    assert isinstance(net[3], QConv2d) and isinstance(net[8], QLinear)


def test_declared_first_conv_and_classifier_are_used():
    class Named(nn.Module):
        first_conv, classifier = "b", "a"

        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 2)
            self.b = nn.Conv2d(1, 1, 1)
            self.c = nn.Conv2d(1, 1, 1)

    net = quantize(Named(), QuantConfig())
    assert type(net.a) is nn.Linear and type(net.b) is nn.Conv2d and isinstance(net.c, QConv2d)


def test_include_exclude_and_overrides():
    cfg = QuantConfig(
        method="lsq", keep_first=True, include=("0",), exclude=("8",), overrides={"3": {"weight_bits": 4}}
    )
    net = quantize(tiny_net(), cfg)
    assert isinstance(net[0], QConv2d) and type(net[8]) is nn.Linear
    assert net[3].weight_quant.bits == 4 and net[0].weight_quant.bits == 2


def test_filter_fn_can_veto():
    net = quantize(tiny_net(), QuantConfig(), filter_fn=lambda m, name: name != "3")
    assert type(net[3]) is nn.Conv2d


def test_calibration_keeps_batchnorm_statistics():
    torch.manual_seed(0)
    net = tiny_net()
    before = {k: v.clone() for k, v in net.state_dict().items() if "running" in k}
    quantize(net, QuantConfig(method="ewgs"), calib_data=torch.randn(8, 3, 8, 8))
    after = net.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert all(bool(q.initialized) for _, q in named_quantizers(net))
    assert net.training


def test_recalibration_changes_ranges():
    net = quantize(tiny_net(), QuantConfig(method="lsq"), calib_data=torch.randn(8, 3, 8, 8))
    step = net[3].act_quant.step.clone()
    calibrate(net, 10 * torch.randn(8, 3, 8, 8))
    assert not torch.equal(step, net[3].act_quant.step)


def test_quantized_model_output_close_to_float_at_8_bits():
    torch.manual_seed(0)
    net = tiny_net().eval()
    x = torch.randn(16, 3, 8, 8)
    ref = net(x)
    q = quantize(net, QuantConfig(method="lsq", weight_bits=8, act_bits=8), calib_data=x).eval()
    assert (q(x) - ref).abs().max() < 0.05 * ref.abs().max()


def test_state_dict_round_trip_rebuilds_identical_model():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 8)
    cfg = QuantConfig(method="ewgs", per_channel=True)
    a = quantize(tiny_net(), cfg, calib_data=x).eval()
    b = quantize(tiny_net(), cfg).eval()
    b.load_state_dict(a.state_dict())
    assert torch.equal(a(x), b(x))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "nope"}, "quant.method"),
        ({"weight_bits": 9}, "quant.weight_bits"),
        ({"act_bits": 0}, "quant.act_bits"),
        ({"backward": "x"}, "quant.backward"),
        ({"overrides": {"a": {"bitz": 2}}}, "unknown key 'bitz'"),
        ({"overrides": {"a": {"weight_bits": 12}}}, "weight_bits"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QuantConfig(**kwargs)


def test_config_dict_round_trip_and_unknown_key():
    cfg = QuantConfig(method="pact", weight_bits=4, include=("a",), overrides={"x.*": {"act_bits": 8}})
    assert QuantConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown key 'bits'"):
        QuantConfig.from_dict({"bits": 2})


def test_weight_only_quantization():
    net = quantize(tiny_net(), QuantConfig(act_bits=None))
    assert net[3].act_quant is None
    net(torch.randn(2, 3, 8, 8)).sum().backward()


def test_ewgs_delta_is_updated_from_hessian():
    torch.manual_seed(0)
    net = quantize(tiny_net(), QuantConfig(method="ewgs", backward_coef=1e-3), calib_data=torch.randn(8, 3, 8, 8))
    x = torch.randn(8, 3, 8, 8)
    target = torch.randn(8, 3)
    deltas = update_ewgs_delta(net, [x], lambda b: (net(b) - target).pow(2).mean(), probes=2)
    assert deltas and any(abs(d - 1e-3) > 1e-6 for d in deltas.values())
    stored = {n: float(q.coef) for n, q in named_quantizers(net)}
    assert all(stored[n] == pytest.approx(d) for n, d in deltas.items())
    assert all(p.grad is None for p in net.parameters())


def test_ewgs_delta_equals_the_hand_computed_hessian_ratio():
    """Loss sum((w y - t)^2) / N has the diagonal Hessian 2 w^2 / N in y = q(x), so one probe is exact:
    delta = s * (Tr(H) / N) / (3 std(g)) with g = 2 w (w y - t) / N and s the output scale."""
    from qdistill.quant import EWGSQuantizer

    torch.manual_seed(0)
    q = EWGSQuantizer(2, is_weight=False, backward="ewgs")
    x, t, w = torch.rand(16, 4), torch.randn(16, 4), 0.5
    q.initialize(x)
    net = nn.Sequential(q)
    deltas = update_ewgs_delta(net, [x], lambda b: ((net(b) * w - t) ** 2).mean(), probes=1)
    with torch.no_grad():
        y, n = q(x), x.numel()
        g = 2 * w * (w * y - t) / n
        expected = float(q.out_scale) * (2 * w**2 / n) / (3 * g.std())
    assert 0 < expected < 3  # inside the clamp [0, levels - 1]
    assert deltas["0"] == pytest.approx(float(expected), rel=1e-4)


def test_ste_quantizers_are_not_touched_by_hessian_update():
    net = quantize(tiny_net(), QuantConfig(method="lsq"), calib_data=torch.randn(4, 3, 8, 8))
    assert update_ewgs_delta(net, [torch.randn(4, 3, 8, 8)], lambda b: net(b).sum()) == {}


def test_ewgs_delta_is_measured_on_the_normalised_grid():
    """Rescaling a quantizer's output scale and undoing it downstream leaves the network, hence delta, unchanged."""
    from qdistill.quant import EWGSQuantizer

    def delta(c: float) -> float:
        torch.manual_seed(0)
        q = EWGSQuantizer(2, is_weight=False, backward="ewgs")
        x = torch.rand(64, 8)
        q.initialize(x)
        q.out_scale.data.mul_(c)
        head = nn.Linear(8, 3)
        head.weight.data.div_(c)
        net = nn.Sequential(q, head)
        target = torch.randn(64, 3)
        gen = torch.Generator().manual_seed(1)
        return update_ewgs_delta(net, [x], lambda b: (net(b) - target).pow(2).mean(), probes=4, generator=gen)["0"]

    assert delta(1.0) == pytest.approx(delta(10.0), rel=1e-4)


def _trained_like_cnn() -> torch.nn.Module:
    """A small conv net whose BatchNorm statistics match its float weights (as a pretrained one's do)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, padding=1),
        torch.nn.BatchNorm2d(16),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, padding=1),
        torch.nn.BatchNorm2d(16),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(16, 4),
    )
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.mul_(0.1)  # small float weights, as trained convs have
        net.train()
        for _ in range(20):
            net(torch.randn(64, 3, 8, 8))
    return net.eval()


def test_scale_free_weights_get_fresh_batchnorm_statistics():
    """DoReFa/PACT weights (2-8 bit) live in [-1, 1]: with the teacher's BN statistics the
    student's activations were about 10x too large, and a PACT clip calibrated on them (22 here,
    for post-BN activations of std about 1) left 4-bit activations almost all zero. Calibration
    re-estimates the statistics first, and only for such weights."""
    from qdistill import make_student

    teacher = _trained_like_cnn()
    x = torch.randn(256, 3, 8, 8)
    with torch.no_grad():
        features = teacher[:-1](x)
    for method, refreshed in (("pact", True), ("dorefa", True), ("lsq", False), ("ewgs", False)):
        student = make_student(
            teacher, QuantConfig(method=method, weight_bits=4, act_bits=4, keep_first=False), x
        ).eval()
        assert torch.equal(student[1].running_var, teacher[1].running_var) != refreshed
        with torch.no_grad():
            ours = student[:-1](x)
        similarity = torch.nn.functional.cosine_similarity(
            ours - ours.mean(0), features - features.mean(0), dim=1
        ).mean()
        assert similarity > 0.3  # PACT 0.21, DoReFa 0.09 with the teacher's statistics
        if method == "pact":
            assert float(student[3].act_quant.alpha) < 5.0  # 2.9 (22.7 before)


def test_full_precision_layers_of_a_student_are_its_teachers():
    """A student quantized with keep_first=False still names its input conv (tap rules read its in_channels)."""
    import qdistill
    from qdistill.quant import full_precision_layers

    teacher = qdistill.create_model("smallcnn28", in_channels=1)
    student = quantize(
        qdistill.create_model("smallcnn28", in_channels=1), QuantConfig(keep_first=False, keep_last=False)
    )
    assert full_precision_layers(student) == full_precision_layers(teacher) == ("conv1", "fc")
    net = quantize(tiny_net(), QuantConfig(keep_first=False))
    assert full_precision_layers(net) == ("0", "10")

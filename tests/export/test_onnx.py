"""QDQ ONNX export runs in ONNX Runtime and agrees with the fake-quant model; bad scales fail loudly."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
import onnx
from onnx import numpy_helper

from qdistill.errors import ConfigError, ExportError
from qdistill.export import export_onnx, snap_biases
from qdistill.export.bench import ort_session
from qdistill.export.parity import onnx_logits, onnx_parity, require_parity, torch_logits

from .tiny import METHODS, tiny_student


@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("method", METHODS)
def test_export_matches_fake_quant(method, bits, images, tmp_path):
    student = tiny_student(method, bits, images, per_channel=bits == 4)
    snap_biases(student, images[:4])  # the runtime's int32 bias rounding would flip 2-bit levels
    # Random tiny models have small logit margins: a rare integer-rounding tie flipped by float
    # noise can move a top-1, so this checks "high" agreement; the slow test checks 99.9%.
    report = export_onnx(student, images[:4], tmp_path / "m.onnx", calib=images, residual="float", min_agreement=90.0)
    scale = float(np.abs(torch_logits(student, images)).max())
    assert report["parity"]["max_abs_logit_diff"] <= 0.1 * scale
    kinds = {layer["weight"] for layer in report["layers"]}
    assert "int8 per-channel" in kinds or bits == 8  # 8-bit grids without a zero stay exact float
    assert (tmp_path / "m.onnx").is_file() and (tmp_path / "m.onnx.md").is_file()
    assert json.loads((tmp_path / "m.onnx.json").read_text())["parity"]["images"] == len(images)


def test_int8_weights_hold_the_trained_levels(images, tmp_path):
    """A 2-bit LSQ layer's int8 weights take at most 4 distinct values per channel (no re-rounding)."""
    student = tiny_student("lsq", 2, images)
    export_onnx(student, images[:4], tmp_path / "m.onnx", calib=images, min_agreement=0)
    model = onnx.load(tmp_path / "m.onnx")
    ints = [numpy_helper.to_array(t) for t in model.graph.initializer if "weight_int8" in t.name]
    assert ints
    assert max(len(np.unique(w[c])) for w in ints for c in range(w.shape[0])) <= 4


def test_int8_residual_uses_integer_kernels(images, tmp_path):
    from qdistill.export.bench import ort_session

    student = tiny_student("lsq", 8, images)
    report = export_onnx(student, images[:4], tmp_path / "m.onnx", calib=images, residual="int8", min_agreement=95.0)
    assert report["parity"]["top1_agreement"] >= 95.0
    sess = ort_session(tmp_path / "m.onnx")
    assert sess.run(None, {"input": images[:2].numpy()})[0].shape == (2, 10)


def test_corrupted_scale_fails_parity(images, tmp_path):
    student = tiny_student("lsq", 4, images)
    export_onnx(student, images[:4], tmp_path / "m.onnx", calib=images, min_agreement=90.0)
    model = onnx.load(tmp_path / "m.onnx")
    rng = np.random.default_rng(0)
    for t in model.graph.initializer:
        if "weight_scale" in t.name:  # a wrong per-channel scale, as a buggy exporter might write
            value = numpy_helper.to_array(t)
            t.CopyFrom(numpy_helper.from_array((value * rng.uniform(0.1, 10, value.shape)).astype(np.float32), t.name))
    parity = onnx_parity(student, model, images)
    assert parity["top1_agreement"] < 99.5 and parity["max_abs_logit_diff"] > 0.1
    with pytest.raises(ExportError, match="parity check failed"):
        require_parity(parity, 99.5, "corrupted.onnx")


def test_refuses_to_write_below_threshold(images, tmp_path):
    student = tiny_student("lsq", 2, images)
    with pytest.raises(ExportError, match="nothing written"):
        export_onnx(student, images[:4], tmp_path / "m.onnx", calib=images, min_agreement=99.99, residual="int8")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0, 100.5, "high"])
def test_min_agreement_must_be_a_percentage(bad, images, tmp_path):
    """NaN compared false with every agreement, so it passed every export."""
    with pytest.raises(ConfigError, match="min_agreement"):
        export_onnx(tiny_student("lsq", 8, images), images[:4], tmp_path / "m.onnx", min_agreement=bad)
    assert not (tmp_path / "m.onnx").exists()


def test_unsupported_op_with_cnn_only_options_is_a_clear_error(images, tmp_path):
    """An op the CNN builder lacks sends the export down the torch.onnx route (test_onnx_fallback.py),
    which cannot honour the builder's own options: one line naming the op."""
    import torch
    from torch import nn

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = tiny_student("lsq", 8, images)

        def forward(self, x):
            return torch.sort(self.net(x), dim=1).values

    with pytest.raises(ExportError, match="unsupported function sort.*need the CNN builder"):
        export_onnx(Odd().eval(), images[:4], tmp_path / "m.onnx", residual="int8")
    assert not (tmp_path / "m.onnx").exists()


def test_lower_bound_just_off_the_grid_is_shifted_exactly(images, tmp_path):
    """A learned EWGS lower bound a hair below 0 (trained ResNet-20: -7.6e-5 with a step of 0.9) is not
    0: rounding it to the grid moved every rounding boundary and flipped levels that cascaded."""
    import torch

    from qdistill.export.intgrid import act_grid
    from qdistill.quant.base import Quantizer

    student = tiny_student("ewgs", 2, images)
    acts = [q for name, q in student.named_modules() if isinstance(q, Quantizer) and name.endswith("act_quant")]
    with torch.no_grad():
        for q in acts:
            q.lower.fill_(-2e-6)
    assert all(act_grid(q).shift is not None for q in acts)
    report = export_onnx(student, images[:4], tmp_path / "m.onnx", calib=images, residual="float", min_agreement=0)
    scale = float(np.abs(torch_logits(student, images)).max())
    assert report["parity"]["max_abs_logit_diff"] <= 1e-4 * scale


def _with_random_bn_shifts(student):
    """Trained BatchNorms have non-zero shifts (the tiny teacher's are zero): the bias to snap."""
    import torch

    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in student.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.3)
    return student


@pytest.mark.parametrize("method", METHODS)
def test_snapped_biases_sit_on_the_int32_grid(method, images, tmp_path):
    """After `snap_biases` every integer layer's bias is a whole number of (input scale x weight
    scale) units, so the runtime's int32 bias is exact."""
    import torch

    student = _with_random_bn_shifts(tiny_student(method, 4, images))
    before = {k: v.clone() for k, v in student.state_dict().items()}
    moves = snap_biases(student, images[:4])
    assert moves and 0 < max(moves.values()) <= 0.5 + 1e-6
    assert not all(torch.equal(before[k], v) for k, v in student.state_dict().items())  # snapped in place
    export_onnx(student, images[:4], tmp_path / "m.onnx", calib=images, residual="float", min_agreement=0)
    graph = onnx.load(tmp_path / "m.onnx").graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producer = {n.output[0]: n for n in graph.node}
    checked = 0
    for node in graph.node:
        act, weight = producer.get(node.input[0]), producer.get(node.input[1]) if len(node.input) > 1 else None
        if node.op_type != "Conv" or act is None or weight is None or act.op_type != "DequantizeLinear":
            continue
        ratio = inits[node.input[2]] / (inits[act.input[1]] * inits[weight.input[1]])
        assert (np.abs(ratio - np.round(ratio)) <= 1e-3 + 1e-6 * np.abs(ratio)).all()  # float32 resolution
        checked += 1
    assert checked >= 3


def test_gate_judges_the_model_as_trained(images, tmp_path):
    """2-bit PACT with trained-like BatchNorm shifts: the runtime's int32 bias rounding flips top-1
    of some images. The gate's figure is the agreement of the written file with the model as
    passed in (recomputed here from the file), the model is left as it was, and the export is
    refused below the threshold; after `snap_biases` the same model exports exactly."""
    import torch

    student = _with_random_bn_shifts(tiny_student("pact", 2, images))
    before = {k: v.clone() for k, v in student.state_dict().items()}
    report = export_onnx(student, images[:4], tmp_path / "a.onnx", calib=images, residual="float", min_agreement=0)
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())
    trained, exported = torch_logits(student, images), onnx_logits(ort_session(tmp_path / "a.onnx"), images)
    agreement = float((trained.argmax(1) == exported.argmax(1)).mean() * 100)
    assert agreement < 100.0 and report["parity"]["top1_agreement"] == agreement
    assert report["parity"]["max_abs_logit_diff"] == float(np.abs(trained - exported).max())
    with pytest.raises(ExportError, match="parity check failed"):
        export_onnx(
            student, images[:4], tmp_path / "b.onnx", calib=images, residual="float", min_agreement=agreement + 0.5
        )
    snap_biases(student, images[:4])
    snapped = export_onnx(student, images[:4], tmp_path / "c.onnx", calib=images, residual="float", min_agreement=99.9)
    scale = float(np.abs(trained).max())
    assert snapped["parity"]["top1_agreement"] == 100.0 and snapped["parity"]["max_abs_logit_diff"] <= 1e-3 * scale


def test_per_group_weights_export_as_exact_float(images, tmp_path):
    """QDQ has one weight scale per output channel: per-group layers keep their exact quantized weights in float."""
    import torch

    from qdistill import QuantConfig, make_student

    from .tiny import TinyResNet

    torch.manual_seed(0)
    cfg = QuantConfig(method="lsq", weight_bits=4, act_bits=8, group_size=4)
    student = make_student(TinyResNet().eval(), cfg, images[:64]).eval()
    report = export_onnx(student, images[:2], tmp_path / "m.onnx", calib=images[:64], min_agreement=99.0)
    kinds = {layer["weight"] for layer in report["layers"] if layer.get("weight_bits")}
    assert kinds == {"float32 (per-group scales)"} and report["parity"]["top1_agreement_decisive"] >= 99.0

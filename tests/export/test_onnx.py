"""QDQ ONNX export runs in ONNX Runtime and agrees with the fake-quant model; bad scales fail loudly."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
import onnx  # noqa: E402
from onnx import numpy_helper  # noqa: E402

from qdistill.export import export_onnx  # noqa: E402
from qdistill.export.parity import onnx_parity, require_parity, torch_logits  # noqa: E402

from .tiny import METHODS, tiny_student  # noqa: E402


@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("method", METHODS)
def test_export_matches_fake_quant(method, bits, images, tmp_path):
    student = tiny_student(method, bits, images, per_channel=bits == 4)
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
    with pytest.raises(RuntimeError, match="parity check failed"):
        require_parity(parity, 99.5, "corrupted.onnx")


def test_refuses_to_write_below_threshold(images, tmp_path):
    student = tiny_student("lsq", 2, images)
    with pytest.raises(RuntimeError, match="nothing written"):
        export_onnx(student, images[:4], tmp_path / "m.onnx", calib=images, min_agreement=100.1)
    assert not (tmp_path / "m.onnx").exists()


def test_unsupported_op_is_a_clear_error(tmp_path):
    import torch
    from torch import nn

    class Odd(nn.Module):
        def forward(self, x):
            return torch.sort(x, dim=1).values

    with pytest.raises(ValueError, match="unsupported"):
        export_onnx(Odd(), torch.randn(2, 3, 4, 4), tmp_path / "m.onnx")


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
    """Every integer layer's bias is a whole number of (input scale x weight scale) units, so the
    runtime's int32 bias is exact, and the model passed in is left as it was."""
    import torch

    student = _with_random_bn_shifts(tiny_student(method, 4, images))
    before = {k: v.clone() for k, v in student.state_dict().items()}
    report = export_onnx(student, images[:4], tmp_path / "m.onnx", calib=images, residual="float", min_agreement=0)
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())
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
    assert 0 < report["parity"]["bias_shift_levels"] <= 0.5 + 1e-6 and "unsnapped" in report["parity"]


def test_snapping_removes_the_runtime_bias_rounding(images, tmp_path):
    """2-bit PACT: the runtime's int32 bias rounding alone flips top-1 of the unsnapped model."""
    student = _with_random_bn_shifts(tiny_student("pact", 2, images))
    scale = float(np.abs(torch_logits(student, images)).max())
    kw = dict(calib=images, residual="float", min_agreement=0)
    plain = export_onnx(student, images[:4], tmp_path / "a.onnx", snap_bias=False, **kw)["parity"]
    snapped = export_onnx(student, images[:4], tmp_path / "b.onnx", **kw)["parity"]
    assert plain["max_abs_logit_diff"] > 0.02 * scale and plain["top1_agreement"] < 100.0
    assert snapped["top1_agreement"] == 100.0 and snapped["max_abs_logit_diff"] <= 1e-3 * scale

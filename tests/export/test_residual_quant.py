"""`QuantConfig(residual_bits=8)`: residual sums quantized in training, so the exported model is
all-integer in ONNX Runtime and still computes exactly what was trained."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
from torch import nn

import qdistill
from qdistill import QuantConfig, quantize
from qdistill.quant.base import Quantizer

from .tiny import tiny_student

pytest.importorskip("onnxruntime")


def _optimised_ops(path, tmp_path) -> collections.Counter:
    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    so.log_severity_level = 3
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return collections.Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)


def test_config_checks_residual_bits():
    for bad in (1, 9, 2.5, True):
        with pytest.raises(ValueError, match="residual_bits"):
            QuantConfig(residual_bits=bad)


def test_models_without_residual_slots_are_refused():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
    with pytest.raises(ValueError, match="residual_quant_slots"):
        quantize(net, QuantConfig(residual_bits=8, keep_first=False))


def test_slots_hold_trainable_quantizers(images):
    student = tiny_student("ewgs", 2, images, residual_bits=8)
    slots = {n for n, m in student.named_modules() if isinstance(m, Quantizer) and ".quant_" in n}
    # identity (block1) and option-A (block2) shortcuts pass quant_in's levels on; block3 projects
    assert slots == {
        "block1.quant_in",
        "block1.quant_branch",
        "block2.quant_in",
        "block2.quant_branch",
        "block3.quant_in",
        "block3.quant_branch",
        "block3.quant_shortcut",
    }
    assert student.block1.conv1.act_quant is not student.block1.quant_in  # 2-bit input, 8-bit stream
    student.train()
    student(images[:8]).square().mean().backward()
    assert student.block2.quant_in.step.grad is not None and student.block2.quant_in.step.grad.abs().sum() > 0


def test_same_width_readers_share_the_block_input_quantizer(images, tmp_path):
    """W8A8 with an 8-bit stream: the first conv and the projection read quant_in's levels as they
    are, so the export has no requantization between blocks."""
    from qdistill.export import export_onnx

    student = tiny_student("lsq", 8, images, residual_bits=8)
    assert student.block1.conv1.act_quant is student.block1.quant_in
    assert student.block3.downsample[0].act_quant is student.block3.quant_in
    export_onnx(student, images[:4], tmp_path / "m.onnx", calib=images, residual="float", min_agreement=99.9)
    ops = _optimised_ops(tmp_path / "m.onnx", tmp_path)
    assert ops["QLinearAdd"] == 2 and ops["QLinearConv"] == 7  # the last sum feeds a float pool: float add
    assert ops["QuantizeLinear"] == 1 and ops["DequantizeLinear"] == 2  # stem output in; last sum out


@pytest.mark.parametrize("method", ["lsq", "ewgs", "pact"])
def test_export_is_all_integer_and_exact(method, images, tmp_path):
    from qdistill.export import export_onnx

    student = tiny_student(method, 4, images, residual_bits=8)
    if method == "ewgs":  # trained EWGS lower bounds sit a hair off the grid: a shift the export folds away
        with torch.no_grad():
            for name, q in student.named_modules():
                if name.endswith("act_quant"):
                    q.lower.fill_(-1e-4)
    qdistill.export.snap_biases(student, images[:4])  # the folded shift is rounded to int32 units otherwise
    report = export_onnx(student, images[:4], tmp_path / "m.onnx", calib=images, residual="float", min_agreement=99.9)
    scale = float(np.abs(qdistill.export.parity.torch_logits(student, images)).max())
    assert report["parity"]["max_abs_logit_diff"] <= 1e-3 * scale
    ops = _optimised_ops(tmp_path / "m.onnx", tmp_path)
    quantized_convs = sum(isinstance(m, nn.Conv2d) and hasattr(m, "weight_quant") for m in student.modules())
    assert ops["QLinearConv"] == quantized_convs  # only the full-precision stem conv stays float
    assert ops["QLinearAdd"] >= 2  # every sum whose inputs are both quantized (not the stem's)


def test_post_hoc_int8_residual_is_refused_for_such_models(images, tmp_path):
    from qdistill.export import export_onnx

    student = tiny_student("lsq", 8, images, residual_bits=8)
    with pytest.raises(ValueError, match="residual_bits"):
        export_onnx(student, images[:4], tmp_path / "m.onnx", calib=images, residual="int8")


def test_packed_round_trip_keeps_residual_quantizers(images, tmp_path):
    from qdistill.export import export_packed, load_packed

    student = tiny_student("lsq", 4, images, residual_bits=8)
    export_packed(student, tmp_path / "m.safetensors")
    rebuilt = load_packed(tmp_path / "m.safetensors", model=tiny_student("lsq", 4, images[:8] * 3, residual_bits=8))
    with torch.no_grad():
        assert torch.equal(student(images), rebuilt(images))


def test_float_twin_has_no_quantizers_left(images):
    """The FP32 speed baseline of a residual-quantized model must not keep its residual quantizers."""
    from qdistill.export.onnx import float_twin

    twin = float_twin(tiny_student("lsq", 8, images, residual_bits=8))
    assert not any(isinstance(m, Quantizer) for m in twin.modules())


def test_ort_build_keeps_the_stream_channels_last(images, tmp_path):
    """The ONNX Runtime build computes the same logits as the QDQ file, with the layout
    transposes between residual blocks gone (one into the stream, one out of it)."""
    import onnx

    from qdistill.export import export_onnx
    from qdistill.export.bench import ort_session
    from qdistill.export.parity import onnx_logits

    student = tiny_student("lsq", 8, images, residual_bits=8)
    report = export_onnx(student, images[:4], tmp_path / "m.onnx", calib=images, min_agreement=99.9, ort_build=True)
    ort_file = tmp_path / "m.onnx.ort.onnx"
    assert report["ort_build"]["identical_to_qdq"] and ort_file.is_file()
    ops = collections.Counter(n.op_type for n in onnx.load(ort_file).graph.node)
    assert ops["Transpose"] <= 2 and ops["QLinearAdd"] == 2
    qdq, fast = (onnx_logits(ort_session(p), images) for p in (tmp_path / "m.onnx", ort_file))
    assert np.array_equal(qdq, fast)

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

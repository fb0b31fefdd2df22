"""Every registered model quantizes (calibrated LSQ W8A8), exports to ONNX and passes the parity gate."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("onnxruntime")
import onnx

import qdistill
from qdistill import QuantConfig
from qdistill.export import export_onnx


@pytest.mark.parametrize("name", qdistill.list_models())
def test_registered_model_exports_through_the_gate(name, tmp_path):
    torch.manual_seed(0)
    teacher = qdistill.create_model(name, num_classes=10, in_channels=3).eval()
    images = torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    student = qdistill.make_student(teacher, QuantConfig(method="lsq", weight_bits=8, act_bits=8), images)
    meta = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "classes": [f"c{i}" for i in range(10)]}
    report = export_onnx(student, images[:2], tmp_path / "m.onnx", calib=images, metadata=meta)  # default gate, 99.5
    assert report["parity"]["top1_agreement_decisive"] >= 99.5
    assert any(layer["weight"] == "int8 per-channel" for layer in report["layers"])
    props = {p.key: p.value for p in onnx.load(tmp_path / "m.onnx").metadata_props}
    assert json.loads(props["input_size"]) == [3, 32, 32] and json.loads(props["classes"])[9] == "c9"
    assert json.loads(props["mean"]) == [0.5, 0.5, 0.5] and json.loads(props["std"]) == [0.25, 0.25, 0.25]

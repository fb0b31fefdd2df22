"""`compare` (what `qdistill bench` runs) and the export's output folder: one-line user errors."""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("onnxruntime")
import onnx

from qdistill.errors import ExportError, MissingFileError
from qdistill.export import export_onnx
from qdistill.export.bench import compare
from qdistill.export.graph import build_onnx
from qdistill.export.onnx import float_twin

from .tiny import tiny_student


@pytest.fixture(scope="module")
def pair(tmp_path_factory, images):
    """An FP32 and a W8A8 ONNX file of a model whose input is 3x16x16 (not the CLI's 3x32x32)."""
    folder = tmp_path_factory.mktemp("bench")
    student = tiny_student("lsq", 8, images)
    onnx.save(build_onnx(float_twin(student), images[:1]).model, str(folder / "fp32.onnx"))
    onnx.save(build_onnx(student, images[:1]).model, str(folder / "q.onnx"))
    return folder / "fp32.onnx", folder / "q.onnx"


def test_shape_is_read_from_the_model(pair):
    rows = compare(*pair, batches=(2,), seconds=0.01)
    assert [r["format"] for r in rows] == ["fp32", "int8"] and all(r["batch"] == 2 for r in rows)


def test_a_shape_the_model_does_not_take_is_one_line(pair):
    with pytest.raises(ExportError, match="3,32,32 differs from the model's 3,16,16"):
        compare(*pair, (3, 32, 32), batches=(1,), seconds=0.01)


def test_missing_fp32_file(pair, tmp_path):
    with pytest.raises(MissingFileError, match="FP32 reference not found"):
        compare(tmp_path / "missing.onnx", pair[1], batches=(1,), seconds=0.01)


def test_a_checkpoint_is_not_an_onnx_model(pair, tmp_path):
    torch.save({"w": torch.zeros(2)}, tmp_path / "model.pt")
    with pytest.raises(ExportError, match="model.pt is not an ONNX model"):
        compare(pair[0], tmp_path / "model.pt", batches=(1,), seconds=0.01)


def test_output_below_a_file_is_refused_before_any_work(images, tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ExportError, match="is a file, not a folder"):
        export_onnx(torch.nn.Sequential(), images[:2], tmp_path / "file" / "m.onnx")  # checked before tracing


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder_is_refused_before_any_work(images, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(ExportError, match="cannot write"):
            export_onnx(torch.nn.Sequential(), images[:2], folder / "m.onnx")
    finally:
        folder.chmod(0o755)

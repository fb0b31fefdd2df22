"""A CNN with ops qdistill's CNN graph builder does not translate (SiLU, ReLU6, sigmoid gating,
max pooling) exports through the torch.onnx route instead, with the same parity gate."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from qdistill import QuantConfig, make_student
from qdistill.errors import ExportError
from qdistill.export import export_onnx

ort = pytest.importorskip("onnxruntime")


class _Gate(nn.Module):
    """Squeeze-and-excitation: a sigmoid gate per channel."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, 4, 1), nn.Conv2d(4, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.SiLU())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16), nn.BatchNorm2d(16), nn.ReLU6())
        self.gate, self.pw = _Gate(16), nn.Conv2d(16, 16, 1)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = nn.functional.max_pool2d(torch.relu(x + self.pw(self.gate(self.dw(x)))), 2)
        return self.head(x.mean((2, 3)))


@pytest.fixture(scope="module")
def student() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    images = torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    net = _Net().eval()
    with torch.no_grad():
        net.head.weight.mul_(20.0)  # spread the classes so top-1 decides something
    return make_student(net, QuantConfig(method="lsq", weight_bits=4, act_bits=8), images).eval(), images


def test_unknown_ops_take_the_torch_onnx_route_with_integer_weights(student, tmp_path) -> None:
    model, images = student
    path = tmp_path / "net.onnx"
    report = export_onnx(model, images[:4], path, calib=images, min_agreement=90)
    assert "dynamo" in report["format"] and "SiLU" in report["notes"][0]
    assert report["metadata"]["input_size"] == [3, 16, 16]
    proto = onnx.load(path)
    ints = {t.name: list(t.dims) for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8}
    layers = {n: list(m.weight.shape) for n, m in model.named_modules() if n in ("dw.0", "gate.fc1", "gate.fc2", "pw")}
    assert {n: ints.get(f"{n}.ints") for n in layers} == layers  # stem and head stay float (keep_first/last)
    assert any(n.op_type == "DequantizeLinear" for n in proto.graph.node)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]
    with torch.no_grad():
        want = model(images).numpy()
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.95
    np.testing.assert_allclose(got, want, atol=1e-3 * np.abs(want).max(), rtol=0)


def test_cnn_builder_options_are_refused_on_that_route(student, tmp_path) -> None:
    model, images = student
    with pytest.raises(ExportError, match="SiLU.*need the CNN builder"):
        export_onnx(model, images[:4], tmp_path / "net.onnx", ort_build=True)
    assert not (tmp_path / "net.onnx").exists()

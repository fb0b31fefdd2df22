"""A layer type added with `register_quant_module` exports once it implements the protocol
(``from_float``, ``to_float``, ``to_int``): convert, packed round trip, float twin, ONNX."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qdistill.export import export_onnx, export_packed, float_twin, load_packed
from qdistill.quant import QUANT_MODULE_MAP, QuantConfig, QuantModule, convert, quantize, register_quant_module
from qdistill.quant.intform import IntLinear


class Dense(nn.Module):
    """A user's own fully connected layer: not an nn.Linear."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_out, n_in) * 3 / n_in**0.5)
        self.bias = nn.Parameter(torch.randn(n_out) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class QDense(QuantModule, Dense):
    features_last = True

    @classmethod
    def from_float(cls, m: Dense, cfg: QuantConfig) -> QDense:
        q = cls(m.weight.shape[1], m.weight.shape[0])
        q.weight, q.bias = m.weight, m.bias
        q.attach_quantizers(cfg)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.quant_input(x), self.quant_weight(), self.bias)

    def to_float(self) -> Dense:
        return self.float_copy(Dense(self.weight.shape[1], self.weight.shape[0]))

    def to_int(self) -> IntLinear:
        return IntLinear(self)


@pytest.fixture
def dense_registered():
    register_quant_module(Dense, QDense)
    yield
    QUANT_MODULE_MAP.pop(Dense)


def _model(images: torch.Tensor) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, 2), nn.ReLU(), nn.Flatten(), Dense(4 * 7 * 7, 16), nn.ReLU(), Dense(16, 10))
    cfg = QuantConfig(method="lsq", weight_bits=8, act_bits=8, per_channel=True, keep_last=False)
    return quantize(net, cfg, calib_data=images).eval()


def test_registered_layer_type_exports(dense_registered, images, tmp_path):
    x = images[:32]
    model = _model(x)
    assert isinstance(model[3], QDense) and isinstance(model[5], QDense) and type(model[0]) is nn.Conv2d
    with torch.no_grad():
        reference = model(x)
        assert torch.equal(convert(copy.deepcopy(model))(x), reference)
        export_packed(model, tmp_path / "m.safetensors")
        assert torch.equal(load_packed(tmp_path / "m.safetensors", model=_model(x[:4] * 2))(x), reference)
    twin = float_twin(model)
    assert type(twin[3]) is Dense and torch.equal(twin[3].weight, model[3].quant_weight())
    report = export_onnx(model, x[:2], tmp_path / "m.onnx", calib=x)
    dense = [layer for layer in report["layers"] if layer["name"] in ("3", "5")]
    assert [layer["weight"] for layer in dense] == ["int8 per-channel"] * 2
    assert report["parity"]["top1_agreement_decisive"] >= 99.5


def test_a_layer_type_without_to_int_is_a_clear_error(images):
    from qdistill.errors import ConfigError

    class Bare(QuantModule, Dense):  # from_float and forward, no to_float / to_int
        from_float = classmethod(QDense.from_float.__func__)
        forward = QDense.forward

    register_quant_module(Dense, Bare)
    try:
        model = _model(images[:8])
    finally:
        QUANT_MODULE_MAP.pop(Dense)
    with pytest.raises(ConfigError, match="no to_int"):
        convert(model)

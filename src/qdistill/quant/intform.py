"""The integer form of a quantized layer: what `convert` turns a fake-quant layer into.

A fake-quant layer rounds its input and weight to ``(k - zero) * step`` on every forward. Its
integer form stores the result instead:

* the weight as integer levels (``int8`` ``k - 2^(b-1)`` for the signed two's-complement grid with
  zero point 0, else ``uint8`` ``k`` with its zero point, which may be a half-integer for the
  symmetric grids without a zero), one scale per tensor, output channel or group, and the zero
  point(s): ``weight = (levels - zero_point) * scale``;
* the input grid (`InputGrid`): a fixed ``[lo, hi]`` with its output ``step`` and ``zero``
  (per-tensor activations), ranges per token computed on the fly, or none (float input).

Levels come from `Quantizer.integer_levels`, which uses the forward's own level formula, so an
integer layer computes the fake-quant layer's output bit for bit. Exporters (ONNX, packed
safetensors) read these tensors and derive nothing themselves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qdistill.errors import ConfigError
from qdistill.quant.base import Quantizer
from qdistill.quant.dynamic import TokenQuantizer
from qdistill.quant.fake_quant import quant_level

if TYPE_CHECKING:
    from qdistill.quant.modules import QuantModule

__all__ = ["INPUT_KINDS", "InputGrid", "IntConv", "IntEmbedding", "IntLinear", "IntModule", "weight_levels"]

INPUT_KINDS = ("float", "tensor", "token")


class InputGrid(nn.Module):
    """How an integer layer's input is rounded: ``kind`` is ``"tensor"`` (a fixed grid),
    ``"token"`` (a range per token, computed on the fly) or ``"float"`` (not rounded).

    A fixed grid stores ``lo``, ``hi`` (the clip range the level formula normalises by), ``step``
    and ``zero``: ``y = (quant_level(x, lo, hi, n) - zero) * step``. Its zero point on the input
    side is ``-lo / ((hi - lo) / n)``.
    """

    def __init__(self, kind: str, bits: int | None = None) -> None:
        super().__init__()
        if kind not in INPUT_KINDS:
            raise ConfigError(f"input grid kind must be one of {INPUT_KINDS}, got {kind!r}")
        self.kind, self.bits = kind, bits
        if kind == "tensor":
            for name in ("lo", "hi", "step", "zero"):
                self.register_buffer(name, torch.zeros(()))
        elif kind == "token":
            self.dynamic = TokenQuantizer(bits)
            self.dynamic.initialized = True  # nothing to calibrate: ranges come from each input

    @property
    def n(self) -> int:
        return 2**self.bits - 1

    @classmethod
    @torch.no_grad()
    def of(cls, q: Quantizer | None) -> InputGrid:
        """The grid of activation quantizer ``q`` (None: a float input)."""
        if q is None:
            return cls("float")
        if isinstance(q, TokenQuantizer):
            return cls("token", q.bits)
        if not q.initialized:
            raise ConfigError(f"{type(q).__name__} is not calibrated: calibrate the model or run one forward first")
        probe = torch.zeros(())
        iv = q.interval(probe)
        if iv.x is not probe or iv.lo.numel() != 1 or iv.step.numel() != 1:
            raise ConfigError(
                f"{type(q).__name__}: only activation grids with one fixed range per tensor have an integer form"
            )
        grid = cls("tensor", q.bits)
        _, step, zero = q.integer_levels(probe)
        for name, value in (("lo", iv.lo), ("hi", iv.hi), ("step", step), ("zero", zero)):
            setattr(grid, name, value.detach().float().reshape(()))
        return grid

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "float":
            return x
        if self.kind == "token":
            return self.dynamic(x)
        return ((quant_level(x.float(), self.lo, self.hi, self.n) - self.zero) * self.step).to(x.dtype)

    def extra_repr(self) -> str:
        return self.kind if self.bits is None else f"{self.kind}, bits={self.bits}"


@torch.no_grad()
def weight_levels(q: Quantizer, w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(levels, scale, zero_point)`` of ``q(w)`` with ``q(w) == (levels - zero_point) * scale``."""
    k, step, zero = q.integer_levels(w)
    half = 2 ** (q.bits - 1)
    if q.bits > 1 and bool((zero == half).all()):  # the signed grid -2^(b-1)..2^(b-1)-1
        return (k - half).to(torch.int8), step, torch.zeros_like(zero)
    return k.to(torch.uint8), step, zero


class IntModule(nn.Module):
    """What every integer layer holds: weight levels, scale(s), zero point(s), input grid, bias.

    ``weight_levels`` has the shape the weight quantizer saw (the weight with its output channel
    first, or one row per output channel and group); ``weight_shape`` is the layer's weight,
    output channel first.
    """

    def __init__(self, layer: QuantModule) -> None:
        super().__init__()
        levels, scale, zero = weight_levels(layer.weight_quant, layer.weight_quant_input())
        self.bits = layer.weight_quant.bits
        self.weight_shape = tuple(layer.oriented_weight().shape)
        self.register_buffer("weight_levels", levels)
        self.register_buffer("weight_scale", scale)
        self.register_buffer("weight_zero_point", zero)
        self.input_grid = InputGrid.of(layer.act_quant)
        bias = getattr(layer, "bias", None)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def dequantized_weight(self) -> Tensor:
        """The fake-quant layer's weight, output channel first (exact: the same float ops), in the
        scale's dtype (float64 after ``.double()``, as the parity gate's re-evaluation needs)."""
        levels = self.weight_levels.to(self.weight_scale.dtype)
        return ((levels - self.weight_zero_point) * self.weight_scale).reshape(self.weight_shape)

    def extra_repr(self) -> str:
        kind = str(self.weight_levels.dtype).removeprefix("torch.")
        return f"weight {self.weight_shape} as {self.bits}-bit {kind} levels, scale {tuple(self.weight_scale.shape)}"


class IntLinear(IntModule):
    """``y = x W^T + b``: the integer form of Linear and of transformers' Conv1D."""

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.input_grid(x), self.dequantized_weight(), self.bias)


class IntConv(IntModule):
    """Integer form of Conv1d and Conv2d (same arguments as the float conv)."""

    def __init__(self, layer: QuantModule) -> None:
        super().__init__(layer)
        self.dims = 2 if isinstance(layer, nn.Conv2d) else 1
        self.kernel_size, self.stride, self.padding = layer.kernel_size, layer.stride, layer.padding
        self.dilation, self.groups, self.padding_mode = layer.dilation, layer.groups, layer.padding_mode
        self.pad = layer._reversed_padding_repeated_twice  # F.pad's order, for non-zero padding modes

    def forward(self, x: Tensor) -> Tensor:
        conv = F.conv2d if self.dims == 2 else F.conv1d
        x, w = self.input_grid(x), self.dequantized_weight()
        if self.padding_mode != "zeros":
            return conv(
                F.pad(x, self.pad, mode=self.padding_mode), w, self.bias, self.stride, 0, self.dilation, self.groups
            )
        return conv(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class IntEmbedding(IntModule):
    """Integer form of Embedding: a table of levels, looked up by token id."""

    def __init__(self, layer: QuantModule) -> None:
        super().__init__(layer)
        self.padding_idx, self.max_norm, self.norm_type = layer.padding_idx, layer.max_norm, layer.norm_type
        self.scale_grad_by_freq, self.sparse = layer.scale_grad_by_freq, layer.sparse

    def forward(self, ids: Tensor) -> Tensor:
        w = self.dequantized_weight()
        return F.embedding(
            ids, w, self.padding_idx, self.max_norm, self.norm_type, self.scale_grad_by_freq, self.sparse
        )

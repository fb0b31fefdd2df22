"""Quantized drop-in replacements for Conv2d and Linear."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch.nn.functional as F
from torch import Tensor, nn

from qdistill.quant.base import QUANTIZERS, Quantizer

if TYPE_CHECKING:
    from qdistill.quant.config import QuantConfig

__all__ = ["QConv2d", "QLinear", "QuantModule"]


def _make(cfg: QuantConfig, weight: Tensor, per_channel_shape: tuple[int, ...]) -> tuple[Quantizer, Quantizer | None]:
    cls = QUANTIZERS.get(cfg.method)
    common = dict(backward=cfg.resolved_backward, coef=cfg.backward_coef)
    wq = cls(cfg.weight_bits, is_weight=True, channel_shape=per_channel_shape if cfg.per_channel else (), **common)
    wq.initialize(weight.detach())
    aq = cls(cfg.act_bits, is_weight=False, **common) if cfg.act_bits is not None else None
    return wq, aq


class QuantModule:
    """Mixin marker: a layer whose weight and input pass through quantizers."""

    weight_quant: Quantizer
    act_quant: Quantizer | None


class QConv2d(nn.Conv2d, QuantModule):
    """Conv2d whose input and weight are fake-quantized; a subclass, so isinstance checks still hold."""

    @classmethod
    def from_float(cls, conv: nn.Conv2d, cfg: QuantConfig) -> QConv2d:
        q = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
            conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode,
            device=conv.weight.device, dtype=conv.weight.dtype,
        )  # fmt: skip
        q.weight = conv.weight
        q.bias = conv.bias
        q.weight_quant, q.act_quant = _make(cfg, conv.weight, (conv.out_channels, 1, 1, 1))
        return q

    def forward(self, x: Tensor) -> Tensor:
        if self.act_quant is not None:
            x = self.act_quant(x)
        return self._conv_forward(x, self.weight_quant(self.weight), self.bias)


class QLinear(nn.Linear, QuantModule):
    """Linear whose input and weight are fake-quantized."""

    @classmethod
    def from_float(cls, linear: nn.Linear, cfg: QuantConfig) -> QLinear:
        q = cls(linear.in_features, linear.out_features, linear.bias is not None,
                device=linear.weight.device, dtype=linear.weight.dtype)  # fmt: skip
        q.weight = linear.weight
        q.bias = linear.bias
        q.weight_quant, q.act_quant = _make(cfg, linear.weight, (linear.out_features, 1))
        return q

    def forward(self, x: Tensor) -> Tensor:
        if self.act_quant is not None:
            x = self.act_quant(x)
        return F.linear(x, self.weight_quant(self.weight), self.bias)

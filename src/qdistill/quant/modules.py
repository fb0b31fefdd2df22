"""Quantized drop-in replacements for Conv1d, Conv2d, Linear and Embedding.

Each is a subclass of the float layer it replaces (isinstance checks still hold) and shares its
weight and bias Parameters. The weight quantizer sees the weight with the output channel first
(``(out, in, ...)``); per-group ranges view it as ``(out * in / group_size, group_size * ...)``
rows, so every quantizer's per-channel code serves groups too.

Every quantized layer type implements the same protocol: ``from_float(layer, cfg)`` (the swap),
``to_float()`` (a plain float layer holding the quantized weight) and ``to_int()`` (its integer
form, `qdistill.quant.intform`, which `convert` and the exporters use).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qdistill.errors import ConfigError
from qdistill.quant.base import QUANTIZERS, Quantizer
from qdistill.quant.dynamic import TokenQuantizer
from qdistill.quant.intform import IntConv, IntEmbedding, IntLinear

if TYPE_CHECKING:
    from qdistill.quant.config import QuantConfig

__all__ = ["QConv1d", "QConv2d", "QEmbedding", "QLinear", "QuantModule"]


class QuantModule:
    """Mixin of every quantized layer: a weight quantizer, an optional input quantizer.

    ``features_last``: the layer reads features on the input's last dimension (Linear), so
    per-token activation ranges are defined for it.
    """

    weight_quant: Quantizer
    act_quant: Quantizer | None
    group_size: int | None = None
    features_last = False
    quantizes_input = True

    def attach_quantizers(self, cfg: QuantConfig) -> None:
        """Build the quantizers of ``cfg`` and initialise the weight's from the current weight."""
        cls = QUANTIZERS.get(cfg.method)
        granularity = "group" if cfg.group_size else "channel" if cfg.per_channel else "tensor"
        if granularity not in cls.weight_granularities:
            raise ConfigError(
                f"quant.method {cfg.method!r} defines weight ranges per {', '.join(cls.weight_granularities)}, not per {granularity}"
            )
        self.group_size = cfg.group_size
        view = self.weight_quant_input().detach()
        channels = (view.shape[0],) + (1,) * (view.dim() - 1) if granularity != "tensor" else ()
        common = {"backward": cfg.resolved_backward, "coef": cfg.backward_coef}
        self.weight_quant = cls(
            cfg.weight_bits, is_weight=True, channel_shape=channels, weight_init=cfg.weight_init, **common
        )
        self.weight_quant.initialize(view)
        self.act_quant = None
        if cfg.act_bits is not None and self.quantizes_input:
            if cfg.act_granularity == "token" and not self.features_last:
                raise ConfigError(
                    f"quant.act_granularity 'token' needs features on the last dimension (Linear, Conv1D), not {type(self).__name__}"
                )
            token = cfg.act_granularity == "token"
            self.act_quant = (
                TokenQuantizer(cfg.act_bits, **common) if token else cls(cfg.act_bits, is_weight=False, **common)
            )

    def oriented_weight(self) -> Tensor:
        """The weight with the output channel first (transformers' Conv1D stores it transposed)."""
        return self.weight

    def weight_quant_input(self) -> Tensor:
        """What the weight quantizer sees (export recomputes levels from it): the oriented weight,
        or one row per (output channel, group)."""
        return self.weight_view(self.oriented_weight())

    def weight_view(self, w: Tensor) -> Tensor:
        """``w`` (output channel first) as the weight quantizer sees it."""
        g = self.group_size
        if g is None:
            return w
        if w.shape[1] % g:
            raise ConfigError(
                f"quant.group_size {g} does not divide the {w.shape[1]} inputs of {type(self).__name__} weight {tuple(w.shape)}"
            )
        return w.reshape(w.shape[0] * (w.shape[1] // g), -1)

    def quant_weight(self) -> Tensor:
        """The fake-quantized weight, output channel first."""
        w = self.oriented_weight()
        return self.weight_quant(self.weight_view(w)).reshape(w.shape)

    def quant_input(self, x: Tensor) -> Tensor:
        return x if self.act_quant is None else self.act_quant(x)

    @torch.no_grad()
    def float_copy(self, plain: nn.Module) -> nn.Module:
        """``plain`` (a float layer of this layer's shape) holding the quantized weight and the bias."""
        plain.weight.copy_(self.quant_weight().reshape(plain.weight.shape))
        if getattr(self, "bias", None) is not None:
            plain.bias.copy_(self.bias)
        return plain.train(self.training)


class _QConv(QuantModule):
    """Shared by QConv1d and QConv2d: the float conv's arguments, quantized input and weight."""

    @classmethod
    def from_float(cls, conv: nn.Conv1d | nn.Conv2d, cfg: QuantConfig) -> _QConv:
        q = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            conv.bias is not None,
            conv.padding_mode,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        q.weight, q.bias = conv.weight, conv.bias
        q.attach_quantizers(cfg)
        return q

    def to_float(self) -> nn.Module:
        float_cls = nn.Conv2d if isinstance(self, nn.Conv2d) else nn.Conv1d
        return self.float_copy(
            float_cls(
                self.in_channels,
                self.out_channels,
                self.kernel_size,
                self.stride,
                self.padding,
                self.dilation,
                self.groups,
                self.bias is not None,
                self.padding_mode,
                device=self.weight.device,
                dtype=self.weight.dtype,
            )
        )

    def to_int(self) -> IntConv:
        return IntConv(self)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(self.quant_input(x), self.quant_weight(), self.bias)


class QConv2d(_QConv, nn.Conv2d):
    """Conv2d whose input and weight are fake-quantized."""


class QConv1d(_QConv, nn.Conv1d):
    """Conv1d whose input and weight are fake-quantized."""


class QLinear(QuantModule, nn.Linear):
    """Linear whose input and weight are fake-quantized."""

    features_last = True

    @classmethod
    def from_float(cls, linear: nn.Linear, cfg: QuantConfig) -> QLinear:
        q = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
        )
        q.weight, q.bias = linear.weight, linear.bias
        q.attach_quantizers(cfg)
        return q

    def to_float(self) -> nn.Linear:
        return self.float_copy(
            nn.Linear(
                self.in_features,
                self.out_features,
                self.bias is not None,
                device=self.weight.device,
                dtype=self.weight.dtype,
            )
        )

    def to_int(self) -> IntLinear:
        return IntLinear(self)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.quant_input(x), self.quant_weight(), self.bias)


class QEmbedding(QuantModule, nn.Embedding):
    """Embedding with a fake-quantized table; its input is token ids, so weights only.

    Each row (a token's vector) is an output channel; groups run along the embedding dimension.
    """

    quantizes_input = False

    @classmethod
    def from_float(cls, emb: nn.Embedding, cfg: QuantConfig) -> QEmbedding:
        q = cls(
            emb.num_embeddings,
            emb.embedding_dim,
            emb.padding_idx,
            emb.max_norm,
            emb.norm_type,
            emb.scale_grad_by_freq,
            emb.sparse,
            device=emb.weight.device,
            dtype=emb.weight.dtype,
        )
        q.weight = emb.weight
        q.attach_quantizers(cfg)
        return q

    def to_float(self) -> nn.Embedding:
        return self.float_copy(
            nn.Embedding(
                self.num_embeddings,
                self.embedding_dim,
                self.padding_idx,
                self.max_norm,
                self.norm_type,
                self.scale_grad_by_freq,
                self.sparse,
                device=self.weight.device,
                dtype=self.weight.dtype,
            )
        )

    def to_int(self) -> IntEmbedding:
        return IntEmbedding(self)

    def forward(self, ids: Tensor) -> Tensor:
        return F.embedding(
            ids,
            self.quant_weight(),
            self.padding_idx,
            self.max_norm,
            self.norm_type,
            self.scale_grad_by_freq,
            self.sparse,
        )

"""MobileNetV2 (Sandler et al. 2018) for 64x64 images.

The stem conv has stride 1 instead of 2 so the last stage still sees 4x4. Activations are
``nn.ReLU`` rather than ReLU6: the activation quantizers supply the clipping, and one
activation type keeps hook- and quantizer-matching simple. Dropout before the classifier is
left out so train-mode outputs stay deterministic for distillation.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._layers import ConvBNReLU, init_weights
from ._registry import register_model

__all__ = ["InvertedResidual", "MobileNetV2", "mobilenetv2"]

# (expansion t, output channels c, repeats n, first stride s), Table 2 of the paper
_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise -> 1x1 linear projection, residual when shapes match."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_ch * expand_ratio
        self.use_residual = stride == 1 and in_ch == out_ch
        self.expand = ConvBNReLU(in_ch, hidden, 1) if expand_ratio != 1 else nn.Identity()
        self.depthwise = ConvBNReLU(hidden, hidden, 3, stride, groups=hidden)
        self.project = ConvBNReLU(hidden, out_ch, 1, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """MobileNetV2 (width 1.0): ``stem``, 17 ``blocks``, ``head`` 1x1 conv to 1280, ``fc``.

    Args:
        num_classes: Classifier outputs.
        in_channels: Input image channels.
    """

    first_conv = "stem.conv"
    classifier = "fc"
    input_size = 64

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = ConvBNReLU(in_channels, 32, 3, stride=1)
        blocks, ch = [], 32
        for t, c, n, s in _SETTINGS:
            for i in range(n):
                blocks.append(InvertedResidual(ch, c, s if i == 0 else 1, t))
                ch = c
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvBNReLU(ch, 1280, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(1280, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register_model
def mobilenetv2(**kwargs: Any) -> MobileNetV2:
    """MobileNetV2 1.0x for 64x64 images."""
    return MobileNetV2(**kwargs)

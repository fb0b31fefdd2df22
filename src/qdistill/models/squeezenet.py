"""SqueezeNet 1.1 (Iandola et al. 2016) with BatchNorm for 64x64 images.

Changes from the paper, all for small inputs or quantization: a 3x3 stride-1 stem, BN after
every conv, and a global-pool + ``nn.Linear`` classifier in place of the final 1x1 conv so the
classifier can be kept at full precision like in the other models.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from ._layers import ConvBNReLU, init_weights
from ._registry import register_model

__all__ = ["Fire", "SqueezeNet", "squeezenet"]

# (squeeze, expand) widths of fire2..fire9; a max pool precedes fire2, fire4 and fire6
_FIRES = ((16, 64), (16, 64), (32, 128), (32, 128), (48, 192), (48, 192), (64, 256), (64, 256))
_POOL_BEFORE = (0, 2, 4)


class Fire(nn.Module):
    """1x1 squeeze, then parallel 1x1 and 3x3 expands concatenated on channels."""

    def __init__(self, in_ch: int, squeeze: int, expand: int) -> None:
        super().__init__()
        self.squeeze = ConvBNReLU(in_ch, squeeze, 1)
        self.expand1x1 = ConvBNReLU(squeeze, expand, 1)
        self.expand3x3 = ConvBNReLU(squeeze, expand, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze(x)
        return torch.cat((self.expand1x1(x), self.expand3x3(x)), dim=1)


class SqueezeNet(nn.Module):
    """SqueezeNet 1.1: ``features.stem``, ``features.fire2..9`` with pools, global pool, ``fc``.

    Args:
        num_classes: Classifier outputs.
        in_channels: Input image channels.
    """

    first_conv = "features.stem.conv"
    classifier = "fc"
    input_size = 64

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict(stem=ConvBNReLU(in_channels, 64, 3, 1))
        ch = 64
        for i, (squeeze, expand) in enumerate(_FIRES):
            if i in _POOL_BEFORE:
                layers[f"pool{i + 2}"] = nn.MaxPool2d(3, 2, ceil_mode=True)
            layers[f"fire{i + 2}"] = Fire(ch, squeeze, expand)
            ch = 2 * expand
        self.features = nn.Sequential(layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(ch, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.features(x)), 1))


@register_model
def squeezenet(**kwargs: Any) -> SqueezeNet:
    """SqueezeNet 1.1 with BN for 64x64 images."""
    return SqueezeNet(**kwargs)

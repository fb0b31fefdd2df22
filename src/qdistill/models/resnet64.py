"""Networks for 64x64 images (e.g. Tiny-ImageNet): ResNet-18 and VGG-11 with BN.

ResNet-18 keeps torchvision's module layout (``conv1, bn1, layer1..4, fc``, projection shortcuts
in ``downsample``) but uses a 3x3 stride-1 stem without max pool, the usual change for small
inputs, so layer4 still sees a 8x8 map.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._layers import BasicBlock, init_weights
from ._registry import register_model
from .vgg_cifar import VGG, VGG_CONFIGS

__all__ = ["ResNet64", "resnet18", "vgg11_64"]


class ResNet64(nn.Module):
    """ResNet with BasicBlocks and a small-input stem.

    Args:
        layers: Blocks per stage, ``(2, 2, 2, 2)`` for ResNet-18.
        num_classes: Classifier outputs.
        in_channels: Input image channels.
    """

    first_conv = "conv1"
    classifier = "fc"
    input_size = 64

    def __init__(
        self, layers: tuple[int, int, int, int] = (2, 2, 2, 2), num_classes: int = 10, in_channels: int = 3
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        widths, planes = (64, 128, 256, 512), 64
        for i, (width, blocks) in enumerate(zip(widths, layers), 1):
            stride = 1 if i == 1 else 2
            stage = [BasicBlock(planes, width, stride)] + [BasicBlock(width, width) for _ in range(blocks - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*stage))
            planes = width
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(planes, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register_model
def resnet18(**kwargs: Any) -> ResNet64:
    """ResNet-18 for 64x64 images (11M parameters)."""
    return ResNet64((2, 2, 2, 2), **kwargs)


@register_model
def vgg11_64(**kwargs: Any) -> VGG:
    """VGG-11 with BN for 64x64 images: 5 pools leave 2x2, then global average pool and ``fc``."""
    return VGG(VGG_CONFIGS["vgg11"], input_size=64, **kwargs)

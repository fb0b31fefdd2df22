"""CIFAR ResNets of He et al. (2016), section 4.2: 6n+2 layers, 3 stages of 16/32/64 channels.

Shortcuts are parameter-free (option A), and module names follow the widely shared reference
checkpoints (``conv1``, ``bn1``, ``layer{1,2,3}.{i}.conv{1,2}``, ``linear``) so those files load
unchanged once their ``module.`` prefix is stripped.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from qdistill.errors import ConfigError

from ._layers import BasicBlock, init_weights
from ._registry import register_model

__all__ = ["ResNetCifar", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]


class ResNetCifar(nn.Module):
    """ResNet-``depth`` for 32x32 images: stem, three stages of ``(depth - 2) / 6`` blocks, linear.

    Args:
        depth: Number of weighted layers, ``6n + 2``.
        num_classes: Classifier outputs.
        in_channels: Input image channels.
    """

    first_conv = "conv1"
    classifier = "linear"
    input_size = 32

    def __init__(self, depth: int = 20, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ConfigError(f"CIFAR ResNet depth must be 6n+2 with n >= 1 (20, 32, 44, 56, 110), got {depth}")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.layer1 = self._stage(16, 16, blocks, stride=1)
        self.layer2 = self._stage(16, 32, blocks, stride=2)
        self.layer3 = self._stage(32, 64, blocks, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(64, num_classes)
        init_weights(self)
        nn.init.kaiming_normal_(self.linear.weight)  # the reference recipe He-initialises the head too

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride, shortcut="A")]
        layers += [BasicBlock(planes, planes, 1, shortcut="A") for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(torch.flatten(self.avgpool(x), 1))


@register_model
def resnet20(**kwargs: Any) -> ResNetCifar:
    """ResNet-20 (0.27M parameters)."""
    return ResNetCifar(depth=20, **kwargs)


@register_model
def resnet32(**kwargs: Any) -> ResNetCifar:
    """ResNet-32 (0.46M parameters)."""
    return ResNetCifar(depth=32, **kwargs)


@register_model
def resnet44(**kwargs: Any) -> ResNetCifar:
    """ResNet-44 (0.66M parameters)."""
    return ResNetCifar(depth=44, **kwargs)


@register_model
def resnet56(**kwargs: Any) -> ResNetCifar:
    """ResNet-56 (0.85M parameters)."""
    return ResNetCifar(depth=56, **kwargs)


@register_model
def resnet110(**kwargs: Any) -> ResNetCifar:
    """ResNet-110 (1.7M parameters)."""
    return ResNetCifar(depth=110, **kwargs)

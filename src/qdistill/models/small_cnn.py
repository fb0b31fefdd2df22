"""A three-conv CNN for tiny grey images (8x8 sklearn digits, 28x28 MNIST/Fashion-MNIST).

It trains in seconds on a CPU, which makes it the model for fast end-to-end tests; adaptive
average pooling lets it take any input size from 2x2 up. ``smallcnn28`` also max-pools after the
first conv: on 28x28 images that is 4x fewer multiply-adds (about 6M per image) and gives the last
conv a receptive field wide enough for whole garment shapes; on 8x8 digits it would leave 2x2 maps.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._layers import init_weights
from ._registry import register_model

__all__ = ["SmallCNN", "smallcnn"]


class SmallCNN(nn.Module):
    """conv(32)-[maxpool]-conv(64)-maxpool-conv(64), each with BN and ReLU, global average pool, ``fc``.

    Args:
        num_classes: Classifier outputs.
        in_channels: Input image channels (pass 1 for digits and MNIST).
        width: Channels of the first conv; later convs use twice as many.
        early_pool: Max-pool after the first conv too (for 28x28 inputs).
    """

    first_conv = "conv1"
    classifier = "fc"
    input_size = 28

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 32, early_pool: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2) if early_pool else nn.Identity()
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(2 * width)
        self.relu3 = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.bn1(self.conv1(x))))
        x = self.pool2(self.relu2(self.bn2(self.conv2(x))))
        x = self.relu3(self.bn3(self.conv3(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register_model
def smallcnn(**kwargs: Any) -> SmallCNN:
    """SmallCNN (about 60k parameters) for 8x8 images (digits) and quick tests."""
    return SmallCNN(**kwargs)


@register_model
def smallcnn28(**kwargs: Any) -> SmallCNN:
    """SmallCNN pooling after the first conv too: the Fashion-MNIST (28x28) model of the results."""
    return SmallCNN(early_pool=True, **kwargs)

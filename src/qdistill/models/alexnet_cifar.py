"""AlexNet (Krizhevsky et al. 2012) resized for 32x32 images, with BatchNorm.

Five convs and three FC layers as in the original, but stride-1 stems, 2x2 pools and a 4x4x256
feature map so the network fits CIFAR; BN replaces local response normalisation and dropout,
as in the low-bit AlexNets of DoReFa-Net and later quantization work.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from ._layers import init_weights
from ._registry import register_model

__all__ = ["AlexNetCifar", "alexnet"]

# (out_channels, kernel_size, max-pool after)
_CONVS = ((64, 5, True), (192, 5, True), (384, 3, False), (256, 3, False), (256, 3, True))


class AlexNetCifar(nn.Module):
    """AlexNet for 32x32 images: ``features.conv1..5``, ``hidden.fc1..2`` and the classifier ``fc``.

    Args:
        num_classes: Classifier outputs.
        in_channels: Input image channels.
        width: Width of the two hidden FC layers.
    """

    first_conv = "features.conv1"
    classifier = "fc"
    input_size = 32

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 1024) -> None:
        super().__init__()
        features: OrderedDict[str, nn.Module] = OrderedDict()
        ch = in_channels
        for i, (out, k, pool) in enumerate(_CONVS, 1):
            features[f"conv{i}"] = nn.Conv2d(ch, out, k, padding=k // 2, bias=False)
            features[f"bn{i}"] = nn.BatchNorm2d(out)
            features[f"relu{i}"] = nn.ReLU()
            if pool:
                features[f"pool{i}"] = nn.MaxPool2d(2)
            ch = out
        self.features = nn.Sequential(features)
        self.avgpool = nn.AdaptiveAvgPool2d(4)  # identity at 32x32; keeps other sizes working
        self.hidden = nn.Sequential(
            OrderedDict(
                fc1=nn.Linear(ch * 16, width, bias=False),
                bn1=nn.BatchNorm1d(width),
                relu1=nn.ReLU(),
                fc2=nn.Linear(width, width, bias=False),
                bn2=nn.BatchNorm1d(width),
                relu2=nn.ReLU(),
            )
        )
        self.fc = nn.Linear(width, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.fc(self.hidden(x))


@register_model
def alexnet(**kwargs: Any) -> AlexNetCifar:
    """AlexNet with BN for 32x32 images (5 conv + 3 FC)."""
    return AlexNetCifar(**kwargs)

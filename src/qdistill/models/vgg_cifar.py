"""VGG networks with BatchNorm (Simonyan & Zisserman 2015; Ioffe & Szegedy 2015) for small images.

VGG-11/13 keep the conv stacks of configurations A/B and replace the three large FC layers with a
single linear layer, as is usual on CIFAR. VGG-8 is the shallow variant used in quantization
papers (EWGS, SQAKD): six convs in three pooled stages, then two FC layers.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ._layers import init_weights
from ._registry import register_model

__all__ = ["VGG", "VGG_CONFIGS", "vgg8", "vgg11", "vgg13"]

VGG_CONFIGS: dict[str, list[int | str]] = {
    "vgg8": [128, 128, "M", 256, 256, "M", 512, 512, "M"],
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
}


class VGG(nn.Module):
    """Conv-BN-ReLU stack with max pools (``"M"``), global average pool and an FC head.

    Modules are named ``features.conv{i}``/``bn{i}``/``relu{i}``/``pool{j}``, then optional
    ``hidden.fc{k}``/``bn{k}``/``relu{k}`` layers and the classifier ``fc``.

    Args:
        config: Conv widths and ``"M"`` for a 2x2 max pool.
        num_classes: Classifier outputs.
        in_channels: Input image channels.
        hidden: Widths of FC layers between the pooled features and ``fc``.
        input_size: The image side the configuration was designed for (informational).
    """

    first_conv = "features.conv1"
    classifier = "fc"

    def __init__(
        self,
        config: Sequence[int | str],
        num_classes: int = 10,
        in_channels: int = 3,
        hidden: Sequence[int] = (),
        input_size: int = 32,
    ) -> None:
        super().__init__()
        self.input_size = input_size
        features: OrderedDict[str, nn.Module] = OrderedDict()
        ch, n_conv, n_pool = in_channels, 0, 0
        for item in config:
            if item == "M":
                n_pool += 1
                features[f"pool{n_pool}"] = nn.MaxPool2d(2)
                continue
            n_conv += 1
            features[f"conv{n_conv}"] = nn.Conv2d(ch, int(item), 3, padding=1, bias=False)
            features[f"bn{n_conv}"] = nn.BatchNorm2d(int(item))
            features[f"relu{n_conv}"] = nn.ReLU()
            ch = int(item)
        self.features = nn.Sequential(features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        head: OrderedDict[str, nn.Module] = OrderedDict()
        for k, width in enumerate(hidden, 1):
            head[f"fc{k}"] = nn.Linear(ch, width, bias=False)
            head[f"bn{k}"] = nn.BatchNorm1d(width)
            head[f"relu{k}"] = nn.ReLU()
            ch = width
        self.hidden = nn.Sequential(head)
        self.fc = nn.Linear(ch, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.fc(self.hidden(x))


@register_model
def vgg8(**kwargs: Any) -> VGG:
    """VGG-8: 6 convs (128-128-256-256-512-512) and 2 FC layers for 32x32 images."""
    return VGG(VGG_CONFIGS["vgg8"], hidden=(512,), **kwargs)


@register_model
def vgg11(**kwargs: Any) -> VGG:
    """VGG-11 with BN for 32x32 images."""
    return VGG(VGG_CONFIGS["vgg11"], **kwargs)


@register_model
def vgg13(**kwargs: Any) -> VGG:
    """VGG-13 with BN for 32x32 images."""
    return VGG(VGG_CONFIGS["vgg13"], **kwargs)

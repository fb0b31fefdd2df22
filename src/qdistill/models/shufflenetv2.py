"""ShuffleNetV2 1.0x (Ma et al. 2018) for 64x64 images.

The stem is a 3x3 stride-1 conv without max pool, so the three stages run at 32, 16 and 8
pixels instead of ImageNet's 28, 14 and 7.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._layers import ConvBNReLU, init_weights
from ._registry import register_model

__all__ = ["ShuffleBlock", "ShuffleNetV2", "channel_shuffle", "shufflenetv2"]


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave channels across ``groups`` so information crosses the two branches."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleBlock(nn.Module):
    """ShuffleNetV2 unit: channel split (stride 1) or two downsampling branches (stride 2)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        if stride not in (1, 2) or out_ch % 2 or (stride == 1 and in_ch != out_ch):
            raise ValueError(f"bad ShuffleBlock({in_ch}, {out_ch}, stride={stride})")
        self.stride = stride
        half = out_ch // 2
        if stride == 2:
            self.branch1 = nn.Sequential(
                ConvBNReLU(in_ch, in_ch, 3, 2, groups=in_ch, relu=False),
                ConvBNReLU(in_ch, half, 1),
            )
        branch_in = in_ch if stride == 2 else half
        self.branch2 = nn.Sequential(
            ConvBNReLU(branch_in, half, 1),
            ConvBNReLU(half, half, 3, stride, groups=half, relu=False),
            ConvBNReLU(half, half, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            keep, x2 = x.chunk(2, dim=1)
            out = torch.cat((keep, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    """ShuffleNetV2: ``stem``, ``stage2..4``, ``head`` 1x1 conv, global pool, ``fc``.

    Args:
        num_classes: Classifier outputs.
        in_channels: Input image channels.
        stage_channels: Output widths of stages 2-4 (116/232/464 is the 1.0x model).
        stage_repeats: Units per stage.
        head_channels: Width of the last 1x1 conv.
    """

    first_conv = "stem.conv"
    classifier = "fc"
    input_size = 64

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        stage_channels: tuple[int, int, int] = (116, 232, 464),
        stage_repeats: tuple[int, int, int] = (4, 8, 4),
        head_channels: int = 1024,
    ) -> None:
        super().__init__()
        self.stem = ConvBNReLU(in_channels, 24, 3, 1)
        ch = 24
        for i, (width, repeats) in enumerate(zip(stage_channels, stage_repeats), 2):
            units = [ShuffleBlock(ch, width, 2)] + [ShuffleBlock(width, width, 1) for _ in range(repeats - 1)]
            setattr(self, f"stage{i}", nn.Sequential(*units))
            ch = width
        self.head = ConvBNReLU(ch, head_channels, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(head_channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage4(self.stage3(self.stage2(self.stem(x))))
        return self.fc(torch.flatten(self.avgpool(self.head(x)), 1))


@register_model
def shufflenetv2(**kwargs: Any) -> ShuffleNetV2:
    """ShuffleNetV2 1.0x for 64x64 images."""
    return ShuffleNetV2(**kwargs)

"""Tiny quantized models for export tests: small enough that every export takes well under a second."""

from __future__ import annotations

import torch
from torch import nn

from qdistill import QuantConfig, make_student
from qdistill.models._layers import BasicBlock

METHODS = ("pact", "lsq", "dorefa", "ewgs")


class TinyResNet(nn.Module):
    """Stem, one option-A residual stage change and one projection block: every export pattern, small."""

    first_conv = "conv1"
    classifier = "fc"

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.block1 = BasicBlock(8, 8)
        self.block2 = BasicBlock(8, 16, stride=2, shortcut="A")
        self.block3 = BasicBlock(16, 16, stride=2, shortcut="B")
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)
        with torch.no_grad():  # spread the classes so that top-1 agreement means something
            self.fc.bias.zero_()
            self.fc.weight.normal_(0.0, 10.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.relu(self.bn1(self.conv1(x))))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def tiny_student(
    method: str, bits: int, images: torch.Tensor, per_channel: bool = False, residual_bits: int | None = None
) -> nn.Module:
    torch.manual_seed(0)
    teacher = TinyResNet().eval()
    cfg = QuantConfig(
        method=method, weight_bits=bits, act_bits=bits, per_channel=per_channel, residual_bits=residual_bits
    )
    return make_student(teacher, cfg, images[:64]).eval()

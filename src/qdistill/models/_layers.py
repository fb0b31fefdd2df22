"""Building blocks shared by several model families.

Every activation is its own ``nn.ReLU`` instance and every conv is followed directly by its
BatchNorm, so hooks keyed by module path and conv/BN folding both work on any model here.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BasicBlock", "ConvBNReLU", "PadShortcut", "init_weights"]


class ConvBNReLU(nn.Sequential):
    """``conv -> bn [-> relu]`` with children named ``conv``, ``bn`` and ``relu``."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        relu: bool = True,
    ) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            conv=nn.Conv2d(in_ch, out_ch, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
            bn=nn.BatchNorm2d(out_ch),
        )
        if relu:
            layers["relu"] = nn.ReLU()
        super().__init__(layers)


class PadShortcut(nn.Module):
    """Parameter-free "option A" shortcut of He et al. (2016): subsample by 2, zero-pad channels.

    It keeps the CIFAR ResNets' parameter count (and the reference checkpoints' key set) unchanged.
    """

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))

    def extra_repr(self) -> str:
        return f"pad={self.pad}"


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (He et al. 2016).

    Args:
        in_planes: Input channels.
        planes: Output channels.
        stride: Stride of the first conv.
        shortcut: What ``downsample`` does when the shape changes: ``"A"`` subsamples and pads
            with zeros (CIFAR ResNets, no parameters); ``"B"`` projects with 1x1 conv + BN
            (torchvision layout, keys ``downsample.0`` and ``downsample.1``).

    ``quant_in``, ``quant_branch`` and ``quant_shortcut`` are identities unless
    ``QuantConfig.residual_bits`` puts quantizers there: on the block input (which both the first
    conv and the shortcut read), on the branch before the sum and on a projection shortcut. Then
    every tensor entering a residual sum is quantized and an integer runtime can run the whole
    block without float tensors. An identity or option-A shortcut passes ``quant_in``'s levels
    through unchanged (zero padding is a level), so it needs no quantizer of its own.
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "B") -> None:
        super().__init__()
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        changes_shape = stride != 1 or in_planes != planes
        self.downsample: nn.Module = nn.Identity()
        if changes_shape and shortcut == "A":
            if stride != 2 or planes != 2 * in_planes:
                raise ValueError("option-A shortcut needs stride 2 and doubled channels when the shape changes")
            self.downsample = PadShortcut(planes // 4)
        elif changes_shape:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        self.relu2 = nn.ReLU()
        self.quant_in: nn.Module = nn.Identity()
        self.quant_branch: nn.Module = nn.Identity()
        self.quant_shortcut: nn.Module = nn.Identity()

    @property
    def residual_quant_slots(self) -> tuple[str, ...]:
        """Where ``QuantConfig.residual_bits`` puts quantizers."""
        projects = not isinstance(self.downsample, (nn.Identity, PadShortcut))
        return ("quant_in", "quant_branch") + (("quant_shortcut",) if projects else ())

    def input_readers(self) -> tuple[nn.Module, ...]:
        """Layers that read the block input directly: they may share ``quant_in``."""
        projection = (self.downsample[0],) if isinstance(self.downsample, nn.Sequential) else ()
        return (self.conv1, *projection)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quant_in(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.quant_branch(self.bn2(self.conv2(out)))
        return self.relu2(out + self.quant_shortcut(self.downsample(x)))


def init_weights(model: nn.Module) -> None:
    """He (Kaiming) normal init for convs, unit/zero BN, small normal init for linears."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

import numpy as np
import pytest
import torch
from torch import nn

from qdistill.data import BatchLoader, ImageSet


class TinyNet(nn.Module):
    first_conv, classifier = "conv1", "fc"

    def __init__(self, classes: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        return self.fc(self.pool(x).flatten(1))


@pytest.fixture
def tiny_images() -> ImageSet:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 96)
    images = (rng.random((96, 8, 8, 1)) * 80).astype(np.uint8)
    for c in range(3):  # make the classes learnable: a bright patch per class
        images[labels == c, c * 2 : c * 2 + 3, 2:6] = 250
    return ImageSet(images, labels)


@pytest.fixture
def make_loader():
    def make(data: ImageSet, labels: bool, batch: int = 32, shuffle: bool = True) -> BatchLoader:
        d = data if labels else data.without_labels()
        return BatchLoader(d, batch, mean=(0.3,), std=(0.3,), shuffle=shuffle, seed=0, with_labels=labels)

    return make


@pytest.fixture
def teacher() -> nn.Module:
    torch.manual_seed(0)
    return TinyNet().eval()

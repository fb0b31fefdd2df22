"""Tiny models and batches for the distillation tests (8x8 grey images, seconds per test)."""

from __future__ import annotations

import pytest
import torch

from qdistill import create_model


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead on a shared machine
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(16, 1, 8, 8, generator=gen), torch.randint(0, 10, (16,), generator=gen)


@pytest.fixture
def teacher() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("smallcnn", num_classes=10, in_channels=1, width=8).eval()

"""Shared inputs for export tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def images() -> torch.Tensor:
    return torch.randn(128, 3, 16, 16, generator=torch.Generator().manual_seed(0))

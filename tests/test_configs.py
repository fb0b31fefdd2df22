"""Every shipped config loads and validates, with its numbers read as written (1e-5 is a float)."""

from __future__ import annotations

from pathlib import Path

import pytest

from qdistill.experiment import load_config

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_is_valid(path):
    cfg = load_config(path)
    assert cfg.model.pretrained, "a shipped distillation config names its teacher"
    assert isinstance(cfg.train.lr, float) and 0 < cfg.train.lr < 0.1
    assert cfg.train.quant_lr == pytest.approx(1e-5)
    assert cfg.out.startswith("runs/")


def test_there_are_configs():
    assert len(CONFIGS) >= 10

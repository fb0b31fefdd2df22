"""A real run on ../shared CIFAR-10 JPEG, killed with SIGKILL mid-epoch and resumed, ends bit-identical."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from qdistill.train import load_checkpoint

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (SHARED / "data" / "cifar10-jpeg.tar.gz").exists(), reason="../shared CIFAR-10 JPEG absent"),
]


def _train(cfg: Path, out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "qdistill", "train", str(cfg), "--out", str(out), *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
model: {{name: resnet20, pretrained: {SHARED / "teachers" / "resnet20-12fca82f.th"}}}
data: {{format: imagefolder, root: {SHARED / "data" / "cifar10-jpeg.tar.gz"}, subset: 640, test_subset: 100,
        batch_size: 64, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}}
quant: {{method: ewgs, weight_bits: 2, act_bits: 2}}
train: {{epochs: 1, lr: 0.0005, checkpoint_every: 2, progress: false, hessian_probes: 1}}
calib_images: 64
""")
    full = _train(cfg, tmp_path / "full")
    assert full.wait(timeout=900) == 0, full.stdout.read().decode()[-2000:]

    victim = _train(cfg, tmp_path / "killed")
    last = tmp_path / "killed" / "last.pt"
    deadline = time.time() + 900
    while not last.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert victim.poll() is None, "run ended before it could be killed: " + victim.stdout.read().decode()[-2000:]
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    state = load_checkpoint(last)
    assert state["epoch"] == 0 and 0 < state["step"] < 9  # really stopped mid-epoch

    resumed = _train(cfg, tmp_path / "killed", "--resume")
    assert resumed.wait(timeout=900) == 0, resumed.stdout.read().decode()[-2000:]
    a = load_checkpoint(tmp_path / "full" / "last.pt")["student"]
    b = load_checkpoint(last)["student"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

"""`qdistill train CONFIG --nproc 2`: one run folder written by rank 0, resumable by one process."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from qdistill.models import create_model


def _train(config: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "qdistill", "train", str(config), *extra]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)


def test_two_process_run_then_resume_in_one(tmp_path):
    torch.manual_seed(0)
    teacher = tmp_path / "teacher.pt"
    torch.save(create_model("smallcnn", num_classes=10, in_channels=1).state_dict(), teacher)
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": {"name": "smallcnn", "pretrained": str(teacher)},
                "data": {"format": "digits", "subset": 96, "test_subset": 32, "batch_size": 16, "val_fraction": 0.25},
                "quant": {"method": "ewgs", "weight_bits": 2, "act_bits": 2},
                "train": {"epochs": 1, "max_steps": 3, "progress": False, "device": "cpu"},
                "calib_images": 16,
                "out": str(tmp_path / "run"),
            }
        )
    )

    two = _train(config, "--nproc", "2")
    assert two.returncode == 0, two.stderr
    results = json.loads(two.stdout[two.stdout.index("{") :])  # printed once, by rank 0
    assert two.stdout.count('"best_epoch"') == 1 and results["best_epoch"] == 1
    out = Path(tmp_path / "run")
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1"]  # one writer: one row per epoch
    assert {"last.pt", "best.pt", "model.safetensors", "results.json"} <= {p.name for p in out.iterdir()}

    one = _train(config, "--resume", "--set", "train.epochs=2")  # a 2-process checkpoint, continued by 1
    assert one.returncode == 0, one.stderr
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]

    bad = _train(config, "--nproc", "2", "--overwrite", "--set", "data.batch_size=15")
    assert bad.returncode == 2
    assert bad.stderr.count("error:") == 1 and "15" in bad.stderr and "Traceback" not in bad.stderr

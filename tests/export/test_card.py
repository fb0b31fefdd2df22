"""The model card of a baseline run: labels, teacher and accuracy as the run recorded them."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("onnxruntime")

import qdistill
from qdistill.experiment import RunConfig, run_experiment
from qdistill.export.run import export_run


@pytest.fixture(scope="module")
def fitnet_run(tmp_path_factory):
    """FitNet (CE on labels + a feature hint), a labelled KD baseline, with a saved teacher."""
    out = tmp_path_factory.mktemp("fitnet")
    teacher = out / "teacher.pt"
    torch.manual_seed(0)
    torch.save(qdistill.create_model("smallcnn", num_classes=10, in_channels=1).state_dict(), teacher)
    cfg = RunConfig.from_dict(
        {
            "model": {"name": "smallcnn", "pretrained": str(teacher)},
            "data": {"format": "digits", "subset": 256, "test_subset": 100, "batch_size": 64},
            "quant": {"method": "lsq", "weight_bits": 8, "act_bits": 8},
            "method": {"name": "fitnet"},
            "train": {"epochs": 1, "max_steps": 2},
            "out": str(out / "run"),
            "calib_images": 64,
        }
    )
    run_experiment(cfg)
    return out / "run", teacher


def _card_rows(path) -> dict[str, str]:
    rows = [line.strip("|").split("|") for line in path.read_text().splitlines() if line.startswith("| ")]
    return {k.strip(): v.strip() for k, v, *_ in rows}


def test_card_of_a_labelled_feature_kd_run(fitnet_run):
    run, teacher = fitnet_run
    results = json.loads((run / "results.json").read_text())
    export_run(run, "packed", images=100)
    card = _card_rows(run / "model.packed.safetensors.md")
    assert card["labels used in training"] == "yes"  # fitnet was reported label-free before
    assert card["teacher"] == f"smallcnn ({teacher})"
    assert f"test top1 {results['test_top1']:.2f}%" in card["accuracy"]


def test_labels_used_falls_back_to_the_checkpoint(fitnet_run, tmp_path):
    """A results.json without the key (older runs): the checkpoint's meta still records it."""
    run, _ = fitnet_run
    results = json.loads((run / "results.json").read_text())
    (run / "results.json").write_text(json.dumps({k: v for k, v in results.items() if k != "labels_used"}))
    try:
        export_run(run, "packed", out=tmp_path / "m.safetensors", images=50)
    finally:
        (run / "results.json").write_text(json.dumps(results))
    assert _card_rows(tmp_path / "m.safetensors.md")["labels used in training"] == "yes"

"""End to end: config-driven runs (YAML and Python) and ``qdistill run --method M`` for every method."""

import json

import pytest
import torch
import yaml

from qdistill import create_model
from qdistill.cli import main
from qdistill.distill import BASELINES
from qdistill.experiment import ModelConfig, RunConfig, load_config, load_run, run_experiment
from qdistill.train.checkpoint import load_checkpoint

CLI_METHODS = ["sqakd", "squat", "gor", "ekd", *BASELINES]


@pytest.mark.parametrize("method", CLI_METHODS)
def test_cli_run_works_for_every_method(tmp_path, capsys, method):
    out = tmp_path / "demo"
    rc = main(["run", "--method", method, "--epochs", "1", "--quantizer", "lsq", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    rows = json.loads((out / "results.json").read_text())["rows"]
    student = next(r for r in rows.values() if r["method"] == method)
    assert student["labels_used"] is (method in BASELINES)
    if method == "ekd":
        assert any("resnet20" in name for name in rows)


def _save_teacher(path, name):
    torch.manual_seed(0)
    torch.save(create_model(name, num_classes=10, in_channels=1).state_dict(), path)
    return str(path)


def test_ensemble_run_from_yaml_keeps_teachers_out_of_checkpoints(tmp_path):
    config = {
        "model": {"name": "resnet20", "pretrained": _save_teacher(tmp_path / "r20.pt", "resnet20")},
        "teachers": [
            {"name": "resnet32", "pretrained": _save_teacher(tmp_path / "r32.pt", "resnet32")},
            {"name": "resnet56", "pretrained": _save_teacher(tmp_path / "r56.pt", "resnet56")},
        ],
        "data": {"subset": 96, "test_subset": 32, "batch_size": 32},
        "quant": {"method": "pact", "weight_bits": 2, "act_bits": 2},
        "method": {"name": "ekd", "params": {"combine": "confidence"}},
        "train": {"epochs": 1, "progress": False},
        "out": str(tmp_path / "run"),
        "calib_images": 32,
    }
    path = tmp_path / "ekd.yaml"
    path.write_text(yaml.safe_dump(config))
    cfg = load_config(path)
    assert [t.name for t in cfg.teachers] == ["resnet32", "resnet56"]
    results = run_experiment(cfg)
    assert results["labels_used"] is False and "test_agreement" in results
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert not any("members" in k for k in state["objective"])
    assert set(state["student"]) == set(create_model("resnet20", num_classes=10, in_channels=1).state_dict()) | {
        k for k in state["student"] if "quant" in k
    }
    model, loaded, _ = load_run(tmp_path / "run")
    assert loaded.teachers == cfg.teachers and model(torch.zeros(1, 1, 8, 8)).shape == (1, 10)


def test_teachers_key_is_validated():
    with pytest.raises(ValueError, match="teachers"):
        RunConfig.from_dict({"teachers": {"name": "resnet32"}})
    with pytest.raises(ValueError, match=r"teachers\[0\]"):
        RunConfig.from_dict({"teachers": [{"nam": "resnet32"}]})
    t32 = ModelConfig("resnet32", pretrained="t.pt")
    assert RunConfig(model=ModelConfig(pretrained="s.pt"), teachers=[t32]).teachers == (t32,)

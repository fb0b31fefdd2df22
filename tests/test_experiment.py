"""`run_experiment` and `load_run` on tiny digits runs: files, guards, reproducibility, bad inputs."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from qdistill.errors import CheckpointError, ConfigError, MissingFileError
from qdistill.experiment import RunConfig, load_run, loader_device, run_experiment
from qdistill.models import create_model


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    """Stand-in pretrained weights: a seeded random smallcnn for 1-channel digits."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    torch.save(create_model("smallcnn", num_classes=10, in_channels=1).state_dict(), path)
    return path


def _cfg(out, teacher, **sections) -> RunConfig:
    tree = {
        "model": {"name": "smallcnn", "pretrained": str(teacher)},
        "data": {"format": "digits", "subset": 200, "test_subset": 64, "batch_size": 32},
        "quant": {"method": "lsq", "weight_bits": 2, "act_bits": 2},
        "train": {"epochs": 1, "max_steps": 2, "progress": False},
        "calib_images": 32,
        "out": str(out),
    }
    for name, values in sections.items():
        tree[name] = values if values is None else {**tree.get(name, {}), **values}
    return RunConfig.from_dict(tree)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, teacher_file):
    out = tmp_path_factory.mktemp("run")
    cfg = _cfg(out, teacher_file)
    return cfg, run_experiment(cfg)


def test_finished_run_writes_safetensors_and_json(finished, teacher_file):
    cfg, results = finished
    out = Path(cfg.out)
    info = json.loads((out / "model.json").read_text())
    assert info["model"] == {"name": "smallcnn", "num_classes": 10, "in_channels": 1}
    assert info["quant"]["weight_bits"] == 2 and info["quant"]["method"] == "lsq"
    assert info["labels_used"] is False and info["teacher"] == str(teacher_file)
    assert info["best_epoch"] == results["best_epoch"] == 1
    from safetensors.torch import load_file

    best = torch.load(f"{out}/best.pt", weights_only=False)["student"]
    tensors = load_file(f"{out}/model.safetensors")
    assert set(tensors) == set(best) and "fc.weight" in tensors
    assert not (out / "model.pt").exists()


def test_load_run_rebuilds_the_best_student(finished):
    cfg, _ = finished
    model, loaded_cfg, record = load_run(cfg.out)
    best = torch.load(f"{cfg.out}/best.pt", weights_only=False)["student"]
    assert loaded_cfg == cfg and record["meta"]["labels_used"] is False
    assert all(torch.equal(v, best[k].cpu()) for k, v in model.state_dict().items())
    x = torch.randn(3, 1, 8, 8)
    from_checkpoint, _, _ = load_run(cfg.out, which="last")  # one epoch: last == best
    assert torch.equal(model(x), from_checkpoint(x))


def test_run_folder_as_pretrained_teacher(tmp_path, teacher_file):
    fp = run_experiment(_cfg(tmp_path / "fp", teacher_file, quant=None, method={"name": "qat"}))
    assert fp["weight_bits"] == 32
    teacher = create_model("smallcnn", num_classes=10, in_channels=1, pretrained=tmp_path / "fp")
    model, _, _ = load_run(tmp_path / "fp")
    assert all(
        torch.equal(a, b) for a, b in zip(teacher.state_dict().values(), model.state_dict().values(), strict=True)
    )


def test_load_run_errors_are_one_line(tmp_path, finished):
    import shutil

    with pytest.raises(MissingFileError, match="run directory not found"):
        load_run(tmp_path / "nope")
    with pytest.raises(MissingFileError, match="neither model.json nor best.pt"):
        load_run(tmp_path)
    run = tmp_path / "copy"
    shutil.copytree(finished[0].out, run)
    (run / "model.safetensors").unlink()
    with pytest.raises(MissingFileError, match="model.safetensors"):
        load_run(run)
    (run / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_run(run)
    (run / "model.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"model.json is corrupt"):
        load_run(run)
    state = torch.load(run / "last.pt", weights_only=False)
    del state["student"]
    torch.save(state, run / "last.pt")
    with pytest.raises(CheckpointError, match="no run config or student weights"):
        load_run(run, which="last")


def test_resume_refuses_another_config_and_allows_more_epochs(tmp_path, teacher_file):
    cfg = _cfg(tmp_path, teacher_file)
    run_experiment(cfg)
    changed = _cfg(tmp_path, teacher_file, quant={"weight_bits": 4, "act_bits": 4})
    with pytest.raises(ConfigError, match=r"cannot resume .*quant.act_bits \(2 -> 4\), quant.weight_bits \(2 -> 4\)"):
        run_experiment(changed, resume=True)
    longer = replace(cfg, train=replace(cfg.train, epochs=2))
    assert run_experiment(longer, resume=True)["best_epoch"] in (1, 2)
    rows = json.loads((tmp_path / "metrics.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2]


def test_fresh_start_refuses_another_runs_folder_unless_overwrite(tmp_path, teacher_file):
    cfg = _cfg(tmp_path, teacher_file)
    run_experiment(cfg)
    run_experiment(cfg)  # the same config again: replaced
    other = _cfg(tmp_path, teacher_file, method={"name": "qat"})
    with pytest.raises(ConfigError, match=r"holds another run .*method.name \('sqakd' -> 'qat'\).*--overwrite"):
        run_experiment(other)
    assert json.loads((tmp_path / "model.json").read_text())["labels_used"] is False
    assert run_experiment(other, overwrite=True)["labels_used"] is True
    (tmp_path / "model.json").unlink()
    (tmp_path / "last.pt").unlink()
    with pytest.raises(ConfigError, match="its config is not recorded"):
        run_experiment(cfg)


def test_same_config_same_numbers(tmp_path):
    """A random teacher (built after seeding) and everything after it repeat exactly."""
    cfgs = [_cfg(tmp_path / name, "x", model={"pretrained": None, "random_teacher": True}) for name in "ab"]
    torch.manual_seed(123)  # the global RNG state before a run must not matter
    run_experiment(cfgs[0])
    torch.rand(7)
    run_experiment(cfgs[1])
    assert (tmp_path / "a" / "metrics.json").read_text() == (tmp_path / "b" / "metrics.json").read_text()
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())[0]["train_loss"] > 0


def test_unwritable_out_fails_before_any_work(tmp_path, teacher_file, monkeypatch):
    from qdistill import experiment

    monkeypatch.setattr(experiment, "prepare_data", lambda *a: pytest.fail("data was loaded"))
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"out: cannot write to .*file/run"):
        run_experiment(_cfg(tmp_path / "file" / "run", teacher_file))


def test_num_classes_below_the_labels(tmp_path):
    cfg = _cfg(tmp_path, "x", model={"pretrained": None, "random_teacher": True, "num_classes": 5})
    with pytest.raises(ConfigError, match=r"model.num_classes is 5 but the data has labels up to 9"):
        run_experiment(cfg)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("bn1.running_var", float("nan"), "outputs on the calibration images are not finite"),
        ("bn1.running_var", float("inf"), "same outputs for every calibration image"),  # x / sqrt(inf) = 0
        ("fc.weight", 0.0, "same outputs for every calibration image"),
    ],  # logits = bias
)
def test_broken_teacher_is_refused(tmp_path, teacher_file, key, value, message):
    state = torch.load(teacher_file)
    state[key][:] = value
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=f"model.pretrained: the teacher.* {message}"):
        run_experiment(_cfg(tmp_path / "run", tmp_path / "bad.pt"))


def test_quantization_summary_is_logged(tmp_path, teacher_file, monkeypatch):
    from qdistill import experiment

    real = experiment.make_student

    def with_summary(*args):
        student = real(*args)
        student.qdistill_summary = "3 layers quantized"
        return student

    monkeypatch.setattr(experiment, "make_student", with_summary)
    lines = []
    run_experiment(_cfg(tmp_path, teacher_file), log=lines.append)
    assert lines == ["3 layers quantized"]


def test_snap_biases_makes_the_export_exact(tmp_path, teacher_file):
    """A W2A2 run finished with snap_biases exports to a file that agrees with the saved student."""
    pytest.importorskip("onnxruntime")
    from qdistill.export.run import export_run

    cfg = replace(_cfg(tmp_path / "run", teacher_file, quant={"method": "ewgs"}), snap_biases=True)
    results = run_experiment(cfg)
    assert results["biases_snapped"] > 0 and 0 < results["bias_snap_max_levels"] <= 0.5
    report = export_run(tmp_path / "run", images=64, min_agreement=100.0)
    assert report["parity"]["top1_agreement"] == 100.0


def test_snap_biases_needs_the_export_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a))
    with pytest.raises(ConfigError, match="export extra"):
        RunConfig(snap_biases=True)


@pytest.mark.parametrize(
    "on_device, train_device, expected",
    [("auto", "cpu", None), ("auto", "cuda", "cuda"), (True, "cpu", "cpu"), (False, "cuda", None)],
)
def test_data_on_device_picks_where_the_images_live(on_device, train_device, expected):
    got = loader_device(on_device, torch.device(train_device))
    assert got == (None if expected is None else torch.device(expected))


def test_data_on_device_is_validated(tmp_path):
    with pytest.raises(ConfigError, match="data.on_device must be auto, true or false, got 'yes'"):
        _cfg(tmp_path, "x", data={"on_device": "yes"})


def test_a_run_with_images_on_the_device_gives_the_same_numbers(tmp_path):
    """``data.on_device: true`` on the CPU takes the device path end to end; the batches, so the run, are equal."""
    for name, on in (("host", False), ("device", True)):
        run_experiment(
            _cfg(tmp_path / name, "x", model={"pretrained": None, "random_teacher": True}, data={"on_device": on})
        )
    assert (tmp_path / "host" / "metrics.json").read_text() == (tmp_path / "device" / "metrics.json").read_text()

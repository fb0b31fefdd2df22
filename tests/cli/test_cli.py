"""The command line end to end on tiny budgets: each command, and one clear line per bad input."""

import json

import pytest
import torch

from qdistill.cli import main


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["run", "--out", str(out), "--epochs", "3"]) == 0
    return out


def test_run_writes_table_and_results(demo_dir):
    summary = json.loads((demo_dir / "results.json").read_text())
    rows = summary["rows"]
    assert set(rows) == {"teacher (FP32)", "sqakd student (label-free)", "supervised QAT baseline"}
    assert rows["sqakd student (label-free)"]["labels_used"] is False
    assert rows["supervised QAT baseline"]["labels_used"] is True
    assert rows["sqakd student (label-free)"]["size_bytes"] < rows["teacher (FP32)"]["size_bytes"] / 4
    for name in ("last.pt", "best.pt", "model.safetensors", "model.json", "metrics.csv", "metrics.json"):
        assert (demo_dir / "student_sqakd" / name).exists()


def test_eval_reports_test_accuracy(demo_dir, capsys):
    assert main(["eval", str(demo_dir / "student_sqakd")]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["top1"] > 50 and "agreement" in metrics


def _config(tmp_path, body: str):
    path = tmp_path / "c.yaml"
    path.write_text(body)
    return str(path)


def test_train_from_config_with_overrides(tmp_path, demo_dir):
    cfg = _config(tmp_path, f"""
model: {{name: smallcnn, pretrained: {demo_dir / 'teacher'}}}
data: {{format: digits, batch_size: 64}}
quant: {{method: lsq, weight_bits: 4, act_bits: 4}}
train: {{epochs: 1, progress: false}}
out: {tmp_path / 'run'}
""")
    assert main(["train", cfg, "--set", "quant.weight_bits=3", "--set", "train.lr=0.0005"]) == 0
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert state["meta"]["config"]["quant"]["weight_bits"] == 3
    assert state["meta"]["labels_used"] is False


@pytest.mark.parametrize(
    "body, message",
    [
        ("model: {name: smallcnn}\nmodle: {}\n", "unknown top-level key 'modle'"),
        ("quant: {method: ewgs, bits: 2}\n", "quant: unknown key 'bits'"),
        ("quant: {method: fancy}\n", "quant.method: unknown 'fancy'"),
        ("model: {name: resnet1000}\n", "unknown model 'resnet1000'"),
        ("model: {random_teacher: true}\ndata: {format: idx, root: /nonexistent/fmnist}\n", "/nonexistent/fmnist does not exist"),
        ("method: {name: sqakd, params: {temprature: 2}}\n", "unknown parameter 'temprature'"),
        ("train: {epochs: -1}\n", "train.epochs"),
    ],
)
def test_bad_configs_fail_with_one_line(tmp_path, capsys, body, message):
    assert main(["train", _config(tmp_path, body + f"out: {tmp_path / 'x'}\n")]) == 2
    assert message in _error_line(capsys)


def test_missing_config_file(capsys):
    assert main(["train", "/nonexistent.yaml"]) == 2
    assert "config file not found" in _error_line(capsys)


def test_corrupt_teacher_checkpoint(tmp_path, capsys):
    bad = tmp_path / "teacher.pt"
    bad.write_bytes(b"not a checkpoint")
    cfg = _config(tmp_path, f"model: {{name: smallcnn, pretrained: {bad}}}\nout: {tmp_path / 'x'}\n")
    assert main(["train", cfg]) == 2
    assert "cannot read checkpoint" in _error_line(capsys)


def test_wrong_number_of_classes(tmp_path, capsys, demo_dir):
    cfg = _config(tmp_path, f"model: {{name: smallcnn, num_classes: 5, pretrained: {demo_dir / 'teacher'}}}\n"
                            f"out: {tmp_path / 'x'}\n")  # fmt: skip
    assert main(["train", cfg]) == 2
    assert "checkpoint has 10 classes and the model 5" in _error_line(capsys)


def test_corrupt_run_checkpoint_on_eval(tmp_path, capsys):
    (tmp_path / "best.pt").write_bytes(b"garbage")
    assert main(["eval", str(tmp_path)]) == 2
    assert "corrupt" in _error_line(capsys)


def test_label_free_method_on_unlabelled_data_trains_and_supervised_refuses(tmp_path, capsys, demo_dir):
    import numpy as np
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray((rng.random((8, 8)) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    base = (f"model: {{name: smallcnn, num_classes: 10, in_channels: 1, pretrained: {demo_dir / 'teacher'}}}\n"
            f"data: {{format: unlabelled, root: {folder}, batch_size: 16, cache_dir: {tmp_path / 'cache'}}}\n"
            f"train: {{epochs: 1, progress: false}}\n")  # fmt: skip
    assert main(["train", _config(tmp_path, base + f"out: {tmp_path / 'ok'}\n")]) == 0
    capsys.readouterr()
    bad = base + "method: {name: qat}\n" + f"out: {tmp_path / 'bad'}\n"
    assert main(["train", _config(tmp_path, bad)]) == 2
    assert "needs labels" in _error_line(capsys)

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


def test_run_with_other_settings_refuses_before_training(demo_dir, capsys):
    teacher = demo_dir / "teacher" / "model.safetensors"
    before = teacher.stat().st_mtime_ns
    assert main(["run", "--out", str(demo_dir), "--epochs", "3", "--bits", "4"]) == 2
    line = _error_line(capsys)
    assert "student_sqakd holds another run" in line and "quant.weight_bits (2 -> 4)" in line
    assert teacher.stat().st_mtime_ns == before


def test_eval_reports_test_accuracy(demo_dir, capsys):
    assert main(["eval", str(demo_dir / "student_sqakd")]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["top1"] > 50 and "agreement" in metrics


def _config(tmp_path, body: str):
    path = tmp_path / "c.yaml"
    path.write_text(body)
    return str(path)


def test_train_from_config_with_overrides(tmp_path, demo_dir, capsys):
    cfg = _config(
        tmp_path,
        f"""
model: {{name: smallcnn, pretrained: {demo_dir / "teacher"}}}
data: {{format: digits, batch_size: 64}}
quant: {{method: lsq, weight_bits: 4, act_bits: 4}}
train: {{epochs: 1, progress: false}}
out: {tmp_path / "run"}
""",
    )
    assert main(["train", cfg, "--set", "quant.weight_bits=3", "--set", "train.lr=5e-4"]) == 0
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert state["meta"]["config"]["quant"]["weight_bits"] == 3
    assert state["meta"]["config"]["train"]["lr"] == 0.0005
    assert state["meta"]["labels_used"] is False
    capsys.readouterr()
    assert main(["train", cfg, "--set", "quant.weight_bits=4"]) == 2  # another run's folder
    line = _error_line(capsys)
    assert "holds another run" in line and "quant.weight_bits (3 -> 4)" in line
    assert main(["train", cfg, "--set", "quant.weight_bits=4", "--overwrite"]) == 0
    assert json.loads((tmp_path / "run" / "model.json").read_text())["quant"]["weight_bits"] == 4


@pytest.mark.parametrize(
    "body, message",
    [
        ("model: {name: smallcnn}\nmodle: {}\n", "unknown top-level key 'modle'"),
        ("quant: {method: ewgs, bits: 2}\n", "quant: unknown key 'bits'"),
        ("quant: {method: fancy}\n", "quant.method: unknown 'fancy'"),
        ("model: {name: resnet1000}\n", "unknown model 'resnet1000'"),
        (
            "model: {random_teacher: true}\ndata: {format: idx, root: /nonexistent/fmnist}\n",
            "/nonexistent/fmnist does not exist",
        ),
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
    cfg = _config(
        tmp_path,
        f"model: {{name: smallcnn, num_classes: 5, pretrained: {demo_dir / 'teacher'}}}\nout: {tmp_path / 'x'}\n",
    )
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
    base = (
        f"model: {{name: smallcnn, num_classes: 10, in_channels: 1, pretrained: {demo_dir / 'teacher'}}}\n"
        f"data: {{format: unlabelled, root: {folder}, batch_size: 16, cache_dir: {tmp_path / 'cache'}}}\n"
        f"train: {{epochs: 1, progress: false}}\n"
    )
    assert main(["train", _config(tmp_path, base + f"out: {tmp_path / 'ok'}\n")]) == 0
    capsys.readouterr()
    bad = base + "method: {name: qat}\n" + f"out: {tmp_path / 'bad'}\n"
    assert main(["train", _config(tmp_path, bad)]) == 2
    assert "needs labels" in _error_line(capsys)


def test_unwritable_out_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    cfg = _config(tmp_path, f"model: {{random_teacher: true}}\nout: {tmp_path / 'file' / 'run'}\n")
    assert main(["train", cfg]) == 2
    assert "out: cannot write to" in _error_line(capsys)
    assert main(["run", "--out", str(tmp_path / "file" / "demo")]) == 2
    assert "out: cannot write to" in _error_line(capsys)


def test_debug_shows_the_traceback_of_user_errors(tmp_path):
    from qdistill.errors import MissingFileError

    with pytest.raises(MissingFileError, match="config file not found"):
        main(["train", str(tmp_path / "none.yaml"), "--debug"])


def test_bugs_keep_their_traceback(monkeypatch, tmp_path):
    import qdistill.experiment

    def broken(*args):
        raise TypeError("a bug")

    monkeypatch.setattr(qdistill.experiment, "load_config", broken)
    with pytest.raises(TypeError, match="a bug"):
        main(["train", str(tmp_path / "c.yaml")])


def test_bench_bad_inputs_are_one_line(tmp_path, capsys):
    assert main(["bench", str(tmp_path / "model.pt")]) == 2
    assert "bench takes an .onnx file" in _error_line(capsys)
    (tmp_path / "model.onnx").write_bytes(b"")
    assert main(["bench", str(tmp_path / "model.onnx"), "--fp32", str(tmp_path / "missing.onnx")]) == 2
    assert "missing.onnx not found" in _error_line(capsys)
    (tmp_path / "fp32.onnx").write_bytes(b"")
    assert main(["bench", str(tmp_path / "model.onnx"), "--fp32", str(tmp_path / "fp32.onnx"), "--shape", "3,x"]) == 2
    assert "expected C,H,W" in _error_line(capsys)


def test_method_and_quantizer_choices_come_from_the_registries(monkeypatch, capsys):
    from qdistill.cli import build_parser
    from qdistill.distill import OBJECTIVES
    from qdistill.quant import QUANTIZERS

    monkeypatch.setitem(OBJECTIVES._items, "my_method", object)
    monkeypatch.setitem(QUANTIZERS._items, "my_quantizer", object)
    args = build_parser().parse_args(["run", "--method", "my_method", "--quantizer", "my_quantizer"])
    assert (args.method, args.quantizer) == ("my_method", "my_quantizer")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    assert "my_method" in capsys.readouterr().out

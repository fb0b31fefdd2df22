"""`qdistill export` and `qdistill bench` on a tiny trained run."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("onnxruntime")

from qdistill.cli import main
from qdistill.experiment import RunConfig, run_experiment


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = RunConfig.from_dict(
        {
            "model": {"name": "smallcnn"},
            "data": {"format": "digits", "subset": 256, "test_subset": 200, "batch_size": 64},
            "quant": {"method": "lsq", "weight_bits": 4, "act_bits": 4},
            "method": {"name": "qat"},
            "train": {"epochs": 1, "max_steps": 3},
            "out": str(out),
            "calib_images": 64,
        }
    )
    run_experiment(cfg)
    return out


def test_export_onnx_and_bench(run_dir, capsys):
    assert main(["export", str(run_dir), "--min-agreement", "95", "--images", "200"]) == 0
    report = json.loads((run_dir / "model.onnx.json").read_text())
    assert report["parity"]["top1_agreement"] >= 95 and report["labels_used"] is True
    assert (run_dir / "model.onnx.md").is_file() and (run_dir / "model.onnx.fp32.onnx").is_file()
    assert main(["bench", str(run_dir / "model.onnx"), "--shape", "1,8,8", "--seconds", "0.05"]) == 0
    assert "vs FP32" in capsys.readouterr().out
    assert report["ort_build"]["identical_to_qdq"] and "top1_exported" in report["parity"]
    assert main(["bench", str(run_dir / "model.onnx.ort.onnx"), "--shape", "1,8,8", "--seconds", "0.05"]) == 0
    assert "vs FP32" in capsys.readouterr().out


def test_onnx_metadata_and_card_facts(run_dir):
    import onnx

    from qdistill.experiment import load_run, prepare_data

    cfg = load_run(run_dir)[1]
    splits = prepare_data(cfg.data)[0]
    props = {
        p.key: json.loads(p.value) for p in onnx.load(run_dir / "model.onnx").metadata_props if p.key != "input_scale"
    }
    assert props["input_size"] == [1, 8, 8] and props["mean"] == list(splits.mean) and props["std"] == list(splits.std)
    assert props.get("classes") == (list(splits.train.classes) if splits.train.classes is not None else None)
    card = (run_dir / "model.onnx.md").read_text()
    assert "| teacher | none (method qat trains without one) |" in card and "| labels used in training | yes |" in card
    results = json.loads((run_dir / "results.json").read_text())
    assert f"test top1 {results['test_top1']:.2f}%" in card


@pytest.mark.parametrize("what", ["checkpoint", "missing fp32", "wrong shape"])
def test_bench_user_errors_are_one_line(run_dir, what, capsys):
    args = {
        "checkpoint": ["bench", str(run_dir / "model.pt"), "--fp32", str(run_dir / "model.onnx.fp32.onnx")],
        "missing fp32": ["bench", str(run_dir / "model.onnx"), "--fp32", str(run_dir / "missing.onnx")],
        "wrong shape": ["bench", str(run_dir / "model.onnx"), "--shape", "3,32,32"],
    }[what]
    assert main([*args, "--seconds", "0.01"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_export_packed_is_bit_exact(run_dir):
    assert main(["export", str(run_dir), "--format", "packed", "--images", "100"]) == 0
    report = json.loads((run_dir / "model.packed.safetensors.json").read_text())
    assert report["parity"]["bit_exact"] and report["parity"]["top1_agreement"] == 100.0


@pytest.mark.parametrize("bad", ["nan", "inf", "100.1", "-1"])
def test_export_rejects_a_threshold_that_is_not_a_percentage(run_dir, bad, capsys):
    """``--min-agreement nan`` compared false with every agreement: it silently disabled the gate."""
    assert main(["export", str(run_dir), "--out", str(run_dir / "no.onnx"), "--min-agreement", bad]) == 2
    err = capsys.readouterr().err
    assert "min_agreement" in err and len(err.strip().splitlines()) == 1 and not (run_dir / "no.onnx").exists()

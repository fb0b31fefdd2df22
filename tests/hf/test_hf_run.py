"""Whole runs of tiny Hugging Face causal LMs on the committed text: results, rebuild, resume, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from qdistill.data.text import load_text
from qdistill.errors import ConfigError, MissingFileError
from qdistill.experiment import RunConfig, load_run, run_experiment
from qdistill.hf_experiment import evaluate_hf_run
from qdistill.models.hf import load_hf_model, load_hf_tokenizer
from qdistill.quant.modules import QuantModule
from qdistill.train import trainer as trainer_mod
from qdistill.train.lm_eval import lm_metrics

SAMPLE = Path(__file__).with_name("sample.txt")


def _config(pretrained, out, **quant) -> RunConfig:
    return RunConfig.from_dict(
        {
            "model": {"source": "hf", "pretrained": str(pretrained)},
            "data": {
                "format": "text",
                "root": str(SAMPLE),
                "block_size": 16,
                "test_lines": [41, 60],
                "batch_size": 4,
                "eval_batch_size": 4,
                "cache_dir": False,
            },
            "quant": {"method": "lsq", "weight_bits": 4, "act_bits": None, "per_channel": True, **quant},
            "method": {"name": "sqakd", "params": {"temperature": 1.0}},
            "train": {"epochs": 1, "max_steps": 3, "lr": 1e-3, "progress": False, "device": "cpu"},
            "eval": {"context": 32, "stride": 16},
            "calib_images": 4,
            "out": str(out),
        }
    )


def _test_ids(pretrained) -> torch.Tensor:
    tok = load_hf_tokenizer(str(pretrained))
    return load_text(SAMPLE, lambda s: tok(s, add_special_tokens=False)["input_ids"], 16, test_lines=(41, 60)).test


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_run_reports_teacher_rtn_and_student_and_rebuilds(fixture, request, tmp_path) -> None:
    pretrained = request.getfixturevalue(fixture)
    res = run_experiment(_config(pretrained, tmp_path / "run", group_size=16, act_bits=8, act_granularity="token"))
    teacher, _ = load_hf_model(str(pretrained))
    ids = _test_ids(pretrained)
    assert res["teacher_ppl"] == pytest.approx(lm_metrics(teacher, ids, 32, 16)["ppl"], rel=1e-5)
    assert res["recovery"] == pytest.approx((res["rtn_ppl"] - res["ppl"]) / (res["rtn_ppl"] - res["teacher_ppl"]))
    assert res["ppl_ratio"] == pytest.approx(res["ppl"] / res["teacher_ppl"])
    assert res["tokens_seen"] == 3 * 4 * 16 and res["labels_used"] is False and res["threads"] >= 1
    assert json.loads((tmp_path / "run" / "results.json").read_text())["ppl"] == res["ppl"]
    student, cfg, _ = load_run(tmp_path / "run")  # from model.json + config.json + model.safetensors, offline
    assert cfg.model.source == "hf"
    assert lm_metrics(student, ids, 32, 16)["ppl"] == pytest.approx(res["ppl"], rel=1e-5)
    quantized = [name for name, m in student.named_modules() if isinstance(m, QuantModule)]
    assert not isinstance(student.lm_head, QuantModule) and "lm_head" not in quantized  # kept float
    assert not any("embed" in n or "wte" in n for n in quantized)
    assert any(n.endswith(("self_attn.q_proj", "attn.c_attn")) for n in quantized)
    assert any(n.endswith(("mlp.down_proj", "mlp.c_proj")) for n in quantized)
    again = evaluate_hf_run(tmp_path / "run")  # what `qdistill eval` prints for the run
    assert again["ppl"] == pytest.approx(res["ppl"], rel=1e-5) and again["agreement"] == pytest.approx(res["agreement"])


def test_teacher_stays_out_of_checkpoints_and_rtn_differs_from_teacher(tiny_llama, tmp_path) -> None:
    res = run_experiment(_config(tiny_llama, tmp_path / "run", weight_bits=2, per_channel=False))
    assert res["rtn_ppl"] != pytest.approx(res["teacher_ppl"], rel=1e-3)  # W2 per tensor changes the model
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert not any("teacher" in k for k in state)
    teacher_keys = set(load_hf_model(str(tiny_llama))[0].state_dict())
    assert set(load_file(tmp_path / "run" / "model.safetensors")) > teacher_keys  # the student's, with quantizers


def test_resume_continues_to_more_epochs(tiny_llama, tmp_path) -> None:
    cfg = _config(tiny_llama, tmp_path / "run")
    run_experiment(cfg)
    more = RunConfig.from_dict({**cfg.to_dict(), "train": {**cfg.to_dict()["train"], "epochs": 2}})
    res = run_experiment(more, resume=True)
    assert res["tokens_seen"] == 2 * 3 * 4 * 16
    rows = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2]
    assert math.isfinite(res["ppl"])


def test_missing_model_and_bad_source_are_one_line_errors(tmp_path) -> None:
    with pytest.raises(MissingFileError, match="does not exist"):
        run_experiment(_config(tmp_path / "nothing", tmp_path / "run"))
    with pytest.raises(MissingFileError, match="no config.json"):
        run_experiment(_config(tmp_path, tmp_path / "run"))
    with pytest.raises(ConfigError, match="model.source"):
        RunConfig.from_dict({"model": {"source": "hub"}})
    with pytest.raises(ConfigError, match="needs model.pretrained"):
        RunConfig.from_dict({"model": {"source": "hf"}})


def test_a_run_killed_after_its_first_epoch_resumes_to_the_uninterrupted_student(tiny_llama, tmp_path, monkeypatch):
    def two_epochs(out: Path) -> RunConfig:
        cfg = _config(tiny_llama, out, act_bits=8, act_granularity="token").to_dict()
        return RunConfig.from_dict({**cfg, "train": {**cfg["train"], "epochs": 2}})

    full = run_experiment(two_epochs(tmp_path / "full"))
    real_save = trainer_mod.save_checkpoint

    def kill_after_first_epoch(state, path):
        real_save(state, path)
        if Path(path).name == "last.pt" and state["epoch"] == 1:
            raise KeyboardInterrupt  # as a kill right after the epoch-1 checkpoint

    monkeypatch.setattr(trainer_mod, "save_checkpoint", kill_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(two_epochs(tmp_path / "killed"))
    mid = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)["student"]
    saved: list[tuple[str, int]] = []

    def record(state, path):
        saved.append((Path(path).name, state["epoch"]))
        real_save(state, path)

    monkeypatch.setattr(trainer_mod, "save_checkpoint", record)
    resumed = run_experiment(two_epochs(tmp_path / "killed"), resume=True)
    assert [e for name, e in saved if name == "last.pt"] == [2]  # the resumed process trained epoch 2 only
    assert resumed["ppl"] == full["ppl"] and resumed["tokens_seen"] == full["tokens_seen"] == 2 * 3 * 4 * 16
    a, b = (load_file(tmp_path / d / "model.safetensors") for d in ("full", "killed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(mid[k], a[k]) for k in a if k in mid)  # epoch 2 did move the weights

"""The block-wise reconstruction phase on tiny random-init Llama and BERT models: the MSE it reports against
an independent measurement, its direction, what it changes, resume, and a whole run."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qdistill.distill.student import make_student
from qdistill.errors import ConfigError
from qdistill.experiment import RunConfig, run_experiment
from qdistill.models.hf import load_hf_model
from qdistill.quant.config import QuantConfig
from qdistill.train import blockwise
from qdistill.train.blockwise import blockwise_phase, find_blocks
from qdistill.train.config import TrainConfig

from .test_hf_run import _config

W2 = {"method": "lsq", "weight_bits": 2, "act_bits": None, "per_channel": True}
W4A8_TOKEN = {"method": "lsq", "weight_bits": 4, "act_bits": 8, "act_granularity": "token", "per_channel": True}


def _batches(n: int = 2, rows: int = 2, length: int = 16, vocab: int = 300) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(0, vocab, (rows, length), generator=g)} for _ in range(n)]


@torch.no_grad()
def _block_mse_by_swap(teacher: nn.Module, student: nn.Module, index: int, batches: list) -> float:
    """Independent of the phase's hooks: a copy of the teacher with its block ``index`` replaced by the
    student's, run whole, so transformers itself feeds the block the teacher's hidden states and
    arguments; the MSE of that block's output against the teacher block's output."""
    hybrid = copy.deepcopy(teacher)
    hybrid.model.layers[index] = copy.deepcopy(student.model.layers[index])
    outputs: dict[str, list[torch.Tensor]] = {"t": [], "s": []}

    def keep(key: str):
        return lambda m, a, out: outputs[key].append(out[0] if isinstance(out, tuple) else out)

    hooks = [
        teacher.model.layers[index].register_forward_hook(keep("t")),
        hybrid.model.layers[index].register_forward_hook(keep("s")),
    ]
    for b in batches:
        teacher(**b, use_cache=False)
        hybrid.eval()(**b, use_cache=False)
    for h in hooks:
        h.remove()
    return sum(float(F.mse_loss(s, t)) for s, t in zip(outputs["s"], outputs["t"])) / len(batches)


def test_find_blocks_is_generic_and_refuses_a_model_without_blocks(tiny_llama, tiny_bert) -> None:
    assert find_blocks(load_hf_model(str(tiny_llama))[0]) == "model.layers"
    assert find_blocks(load_hf_model(str(tiny_bert))[0]) == "bert.encoder.layer"
    with pytest.raises(ConfigError, match="no ModuleList of blocks"):
        find_blocks(nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2)))


@pytest.mark.parametrize("quant", [W2, W4A8_TOKEN], ids=["w2", "w4a8-token"])
def test_phase_lowers_each_block_mse_and_trains_only_that_block(tiny_llama, quant, monkeypatch) -> None:
    teacher, _ = load_hf_model(str(tiny_llama))
    batches = _batches()
    student = make_student(teacher, QuantConfig(**quant), batches[0]).eval()
    rtn = copy.deepcopy(student)
    changed: list[set[str]] = []
    train_block = blockwise._train_block

    def spy(index, block, *args):  # which student tensors training block `index` changes
        before = {k: v.clone() for k, v in student.state_dict().items()}
        train_block(index, block, *args)
        changed.append({k for k, v in student.state_dict().items() if not torch.equal(v, before[k])})

    monkeypatch.setattr(blockwise, "_train_block", spy)
    report = blockwise_phase(student, teacher, batches, TrainConfig(blockwise_steps=20, lr=1e-3))
    assert [r["block"] for r in report] == [0, 1]
    for i, row in enumerate(report):
        assert row["mse_before"] == pytest.approx(_block_mse_by_swap(teacher, rtn, i, batches), rel=1e-4)
        assert row["mse_after"] == pytest.approx(_block_mse_by_swap(teacher, student, i, batches), rel=1e-4)
        assert row["mse_after"] < 0.7 * row["mse_before"]
        assert changed[i] and all(k.startswith(f"model.layers.{i}.") for k in changed[i])
        assert any(k.endswith(".weight") for k in changed[i])
    untouched = [k for k in rtn.state_dict() if not k.startswith("model.layers.")]
    assert untouched and all(torch.equal(student.state_dict()[k], rtn.state_dict()[k]) for k in untouched)


def test_phase_works_on_bert_encoder_layers_with_an_attention_mask(tiny_bert) -> None:
    teacher, _ = load_hf_model(str(tiny_bert))
    batches = _batches()
    for b in batches:
        b["attention_mask"] = torch.ones_like(b["input_ids"])
        b["attention_mask"][:, 12:] = 0
    student = make_student(teacher, QuantConfig(**W2), batches[0])
    report = blockwise_phase(student, teacher, batches, TrainConfig(blockwise_steps=20, lr=1e-3))
    assert len(report) == 2 and all(r["mse_after"] < r["mse_before"] for r in report)


def test_resume_loads_finished_blocks_and_gives_the_same_student(tiny_llama, tmp_path, monkeypatch) -> None:
    teacher, _ = load_hf_model(str(tiny_llama))
    batches, cfg = _batches(), TrainConfig(blockwise_steps=5, lr=1e-3)
    rtn = make_student(teacher, QuantConfig(**W2), batches[0])
    whole = copy.deepcopy(rtn)
    report = blockwise_phase(whole, teacher, batches, cfg, tmp_path / "bw")
    assert sorted(p.name for p in (tmp_path / "bw").iterdir()) == ["block_000.pt", "block_001.pt"]
    (tmp_path / "bw" / "block_001.pt").unlink()  # killed after block 0
    trained = []
    train_block = blockwise._train_block
    monkeypatch.setattr(blockwise, "_train_block", lambda i, *a: (trained.append(i), train_block(i, *a)))
    resumed = copy.deepcopy(rtn)
    assert blockwise_phase(resumed, teacher, batches, cfg, tmp_path / "bw") == report
    assert trained == [1]
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in whole.state_dict().items())
    again = copy.deepcopy(rtn)
    assert blockwise_phase(again, teacher, [], cfg, tmp_path / "bw") == report  # finished: no teacher pass
    assert trained == [1] and all(torch.equal(v, again.state_dict()[k]) for k, v in whole.state_dict().items())


def test_run_experiment_reports_the_phase_and_a_resume_does_not_redo_it(tiny_llama, tmp_path, monkeypatch) -> None:
    cfg = _config(tiny_llama, tmp_path / "run", weight_bits=2)
    d = cfg.to_dict()
    d["train"] |= {"blockwise_steps": 10, "blockwise_batches": 2, "blockwise_lr": 1e-3}
    cfg = RunConfig.from_dict(d)
    res = run_experiment(cfg)
    assert [r["block"] for r in res["blockwise"]] == [0, 1]
    assert all(r["mse_after"] < r["mse_before"] for r in res["blockwise"])
    assert 0 < res["blockwise_seconds"] < res["train_seconds"]
    assert json.loads((tmp_path / "run" / "results.json").read_text())["blockwise"] == res["blockwise"]
    monkeypatch.setattr(blockwise, "_train_block", lambda *a: pytest.fail("a resume retrained a block"))
    more = RunConfig.from_dict({**d, "train": {**d["train"], "epochs": 2}})
    assert run_experiment(more, resume=True)["blockwise"] == res["blockwise"]
    with pytest.raises(ConfigError, match="model.source: hf"):
        RunConfig.from_dict({"train": {"blockwise_steps": 5}})


def test_gptq_only_rounds_each_block_better_than_round_to_nearest(tiny_llama) -> None:
    """``gptq: true, blockwise_steps: 0``: every block's MSE drops (measured by swapping the block into the
    teacher), the weights lie on their grid, and nothing outside the blocks changes."""
    teacher, _ = load_hf_model(str(tiny_llama))
    batches = _batches(n=4)
    student = make_student(teacher, QuantConfig(**W2), batches[0]).eval()
    rtn = copy.deepcopy(student)
    report = blockwise_phase(student, teacher, batches, TrainConfig(blockwise_steps=0, gptq=True))
    for i, row in enumerate(report):
        assert row["mse_before"] == pytest.approx(_block_mse_by_swap(teacher, rtn, i, batches), rel=1e-4)
        assert row["mse_gptq"] == row["mse_after"]
        assert row["mse_gptq"] == pytest.approx(_block_mse_by_swap(teacher, student, i, batches), rel=1e-4)
        assert row["mse_gptq"] < row["mse_before"] and row["gptq_proxy_ratio"] < 1
    for m in student.modules():
        if hasattr(m, "weight_quant"):
            assert torch.equal(m.quant_weight().detach(), m.oriented_weight().detach())
    untouched = [k for k in rtn.state_dict() if not k.startswith("model.layers.")]
    assert all(torch.equal(student.state_dict()[k], rtn.state_dict()[k]) for k in untouched)


def test_run_experiment_with_gptq_then_block_steps(tiny_llama, tmp_path) -> None:
    d = _config(tiny_llama, tmp_path / "run", weight_bits=2).to_dict()
    d["train"] |= {"blockwise_steps": 5, "blockwise_batches": 2, "blockwise_lr": 1e-3, "gptq": True}
    res = run_experiment(RunConfig.from_dict(d))
    assert all(r["mse_gptq"] < r["mse_before"] and r["mse_after"] < r["mse_before"] for r in res["blockwise"])
    assert all(r["mse_after"] != r["mse_gptq"] for r in res["blockwise"])  # the steps ran after the rounding
    with pytest.raises(ConfigError, match="model.source: hf"):
        RunConfig.from_dict({"train": {"gptq": True}})
    with pytest.raises(ConfigError, match="gptq_damp"):
        TrainConfig(gptq_damp=0)

"""Training sequences sampled from a tiny random-init Llama teacher: the greedy start and top-k sampling
against the teacher's own full-sequence logits, determinism, resume equality, and whole runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from qdistill.data import generated
from qdistill.data.generated import GenerationSettings, generate_blocks, start_prompts
from qdistill.distill.student import make_student
from qdistill.errors import ConfigError
from qdistill.experiment import DataConfig, RunConfig, run_experiment
from qdistill.hf_experiment import evaluate_hf_run, generation_settings
from qdistill.models.hf import load_hf_model, load_hf_tokenizer
from qdistill.quant.config import QuantConfig
from qdistill.train.lm_eval import block_metrics

SAMPLE = Path(__file__).with_name("sample.txt")


@pytest.fixture(scope="module")
def teacher(tiny_llama):
    return load_hf_model(str(tiny_llama))[0]


def _settings(**kw) -> GenerationSettings:
    return GenerationSettings(
        **{"num_sequences": 10, "block_size": 12, "prompts": ((5,), (7, 8)), "batch_size": 4} | kw
    )


def test_greedy_start_then_top_k_samples_follow_the_teachers_logits(teacher, tmp_path) -> None:
    s = _settings(greedy_tokens=3, top_k=4, seed=1)
    tokens = generate_blocks(teacher, s, tmp_path / "g")
    assert tokens.shape == (10, 12) and tokens.dtype == torch.int64
    prompt_of = [s.prompts[(i // 4) % 2] for i in range(10)]  # chunk c (4 sequences) starts from prompt c mod 2
    assert all(tokens[i, : len(p)].tolist() == list(p) for i, p in enumerate(prompt_of))
    logits = teacher(input_ids=tokens).logits  # every position at once, no cache: an independent forward
    for i, p in enumerate(prompt_of):
        targets, positions = tokens[i, len(p) :], range(len(p) - 1, 11)
        top = logits[i, list(positions)].topk(4, dim=-1).indices
        assert torch.equal(targets[:3], top[:3, 0])  # greedy
        assert all(t in row for t, row in zip(targets[3:].tolist(), top[3:].tolist()))  # within the top 4
    assert not torch.equal(tokens[0], tokens[1])  # sampled, not all greedy


def test_same_seed_same_tokens_other_seed_other_tokens(teacher, tmp_path) -> None:
    a = generate_blocks(teacher, _settings(), tmp_path / "a")
    assert torch.equal(a, generate_blocks(teacher, _settings(), tmp_path / "b"))
    assert not torch.equal(a, generate_blocks(teacher, _settings(seed=1), tmp_path / "c"))


def test_an_interrupted_generation_resumes_to_the_same_tokens(teacher, tmp_path, monkeypatch) -> None:
    whole = generate_blocks(teacher, _settings(), tmp_path / "whole")
    made = []
    chunk = generated._generate_chunk

    def dies_after_two(*args):
        if len(made) == 2:
            raise KeyboardInterrupt
        made.append(args[2])
        return chunk(*args)

    monkeypatch.setattr(generated, "_generate_chunk", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        generate_blocks(teacher, _settings(), tmp_path / "cut")
    assert sorted(p.name for p in (tmp_path / "cut").glob("chunk_*")) == ["chunk_00000.npy", "chunk_00001.npy"]
    assert not list((tmp_path / "cut").glob(".*"))  # no temporary file left behind
    made.clear()
    monkeypatch.setattr(generated, "_generate_chunk", lambda *a: (made.append(a[2]), chunk(*a))[1])
    assert torch.equal(generate_blocks(teacher, _settings(), tmp_path / "cut"), whole)
    assert made == [2]  # only the missing chunk


def test_other_settings_or_another_teacher_regenerate_the_folder(teacher, tiny_llama, tmp_path) -> None:
    first = generate_blocks(teacher, _settings(), tmp_path / "g")
    np.save(tmp_path / "g" / "chunk_00000.npy", np.zeros((4, 12), np.int32))  # kept while the settings match
    assert generate_blocks(teacher, _settings(), tmp_path / "g")[0].tolist() == [0] * 12
    assert torch.equal(generate_blocks(teacher, _settings(temperature=1.0 + 1e-9), tmp_path / "g"), first)
    other = load_hf_model(str(tiny_llama))[0]
    with torch.no_grad():
        other.lm_head.weight.mul_(2.0)
    assert not torch.equal(generate_blocks(other, _settings(temperature=1.0 + 1e-9), tmp_path / "g"), first)


def test_prompts_and_bad_settings(tiny_llama) -> None:
    tok = load_hf_tokenizer(str(tiny_llama))
    assert start_prompts(tok, None) == ((tok.eos_token_id,),)  # the sample tokenizer has no BOS
    assert start_prompts(tok, ["In the"]) == (tuple(tok("In the")["input_ids"]),)
    with pytest.raises(ConfigError, match="prompts of 1 to 11"):
        _settings(prompts=(tuple(range(12)),))
    with pytest.raises(ConfigError, match="gen_temperature"):
        _settings(temperature=0.0)
    with pytest.raises(ConfigError, match="gen_test_sequences"):
        RunConfig.from_dict({"data": {"format": "generated", "num_sequences": 4, "gen_test_sequences": 4}})
    with pytest.raises(ConfigError, match="evaluation text only"):
        RunConfig.from_dict({"data": {"format": "generated", "root": str(SAMPLE)}})


def test_block_metrics_match_a_hand_computed_kl_and_agreement(teacher) -> None:
    blocks = torch.randint(0, 300, (3, 8), generator=torch.Generator().manual_seed(0))
    student = make_student(teacher, QuantConfig(method="lsq", weight_bits=2, act_bits=None), blocks[:2]).eval()
    got = block_metrics(student, teacher, blocks, batch_size=2)
    with torch.no_grad():
        p_t = torch.softmax(teacher(input_ids=blocks).logits, -1)
        q = torch.softmax(student(input_ids=blocks).logits, -1)
    kl = (p_t * (p_t.log() - q.log())).sum(-1).mean()
    assert got["kl"] == pytest.approx(float(kl), rel=1e-4) and got["kl"] > 0
    assert got["agreement"] == pytest.approx(100 * float((p_t.argmax(-1) == q.argmax(-1)).float().mean()))
    assert got["eval_tokens"] == 24


def _generated_config(pretrained, out, **data) -> RunConfig:
    return RunConfig.from_dict(
        {
            "model": {"source": "hf", "pretrained": str(pretrained)},
            "data": {
                "format": "generated",
                "num_sequences": 14,
                "gen_test_sequences": 4,
                "gen_batch_size": 4,
                "gen_top_k": 20,
                "block_size": 16,
                "val_fraction": 0.2,
                "batch_size": 4,
                "eval_batch_size": 4,
                "cache_dir": False,
                **data,
            },
            "quant": {"method": "lsq", "weight_bits": 2, "act_bits": None, "per_channel": True},
            "method": {"name": "sqakd", "params": {"temperature": 1.0}},
            "train": {"epochs": 1, "max_steps": 2, "lr": 1e-3, "progress": False, "device": "cpu"},
            "eval": {"context": 32, "stride": 16},
            "calib_images": 4,
            "out": str(out),
        }
    )


def test_a_run_on_generated_data_measures_agreement_and_kl_only(tiny_llama, teacher, tmp_path) -> None:
    cfg = _generated_config(tiny_llama, tmp_path / "run")
    res = run_experiment(cfg)
    assert res["eval_on"] == ["generated"] and "ppl" not in res
    assert res["gen_eval_tokens"] == 4 * 16 and 0 <= res["gen_agreement"] <= 100
    assert res["gen_kl"] > 0 and res["rtn_gen_kl"] > 0 and res["tokens_seen"] == 2 * 4 * 16
    settings = generation_settings(cfg.data, load_hf_tokenizer(str(tiny_llama)))
    kept = np.concatenate([np.load(f) for f in sorted((tmp_path / "run" / "generated").glob("chunk_*.npy"))])
    assert np.array_equal(kept, generate_blocks(teacher, settings, tmp_path / "again").numpy())
    assert evaluate_hf_run(tmp_path / "run")["gen_kl"] == pytest.approx(res["gen_kl"], rel=1e-5)
    assert json.loads((tmp_path / "run" / "results.json").read_text())["eval_on"] == ["generated"]


def test_a_run_on_generated_data_with_real_text_also_measures_perplexity(tiny_llama, tmp_path) -> None:
    res = run_experiment(_generated_config(tiny_llama, tmp_path / "run", root=str(SAMPLE), test_lines=[41, 60]))
    assert res["eval_on"] == ["text", "generated"]
    assert res["ppl"] > 1 and res["rtn_ppl"] > 1 and res["teacher_ppl"] > 1 and "gen_kl" in res


def test_a_random_first_token_then_greedy_tokens_follow_it(teacher, tmp_path) -> None:
    s = _settings(random_first_from=50, greedy_tokens=2, seed=3)
    tokens = generate_blocks(teacher, s, tmp_path / "g")
    first = tokens[:4, 1]  # chunk 0: prompt (5,), then the random token
    assert tokens[:4, 0].tolist() == [5] * 4 and bool((first < 50).all()) and len(set(first.tolist())) > 1
    logits = teacher(input_ids=tokens).logits
    assert torch.equal(tokens[:4, 2:4], logits[:4, 1:3].argmax(-1))  # the two greedy tokens follow the random one
    same = generate_blocks(teacher, _settings(greedy_tokens=2, seed=3), tmp_path / "h")
    assert len({tuple(row) for row in same[:4, :3].tolist()}) == 1  # without it: one shared greedy opening


def test_generation_settings_draw_the_first_token_from_the_tokenizers_vocabulary(tiny_llama) -> None:
    tokenizer = load_hf_tokenizer(str(tiny_llama))
    assert generation_settings(DataConfig(format="generated"), tokenizer).random_first_from == len(tokenizer)
    off = DataConfig(format="generated", gen_random_first=False)
    assert generation_settings(off, tokenizer).random_first_from == 0

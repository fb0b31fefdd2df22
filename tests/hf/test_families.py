"""More transformers families than the Llama / GPT-2 / BERT fixtures, end to end: a label-free SQuaT
student (W4A8, A8 per token) trains, and its export passes the parity gate (packed causal LMs
bit-exact, ONNX text classifiers). Tiny random-init models, a few seconds each."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qdistill.experiment import RunConfig, run_experiment
from qdistill.export.run import export_run

from .conftest import _tokenizer

transformers = pytest.importorskip("transformers")
SAMPLE = Path(__file__).with_name("sample.txt")
SMALL = {"num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 128}
DECODER = {"hidden_size": 32, "intermediate_size": 64, "num_key_value_heads": 1, **SMALL}
FAMILIES = {
    "qwen2": ("Qwen2ForCausalLM", "Qwen2Config", DECODER),
    "phi3": ("Phi3ForCausalLM", "Phi3Config", {**DECODER, "num_key_value_heads": 2, "pad_token_id": 0}),
    "gemma": ("GemmaForCausalLM", "GemmaConfig", {**DECODER, "head_dim": 16}),
    "falcon": (
        "FalconForCausalLM",
        "FalconConfig",
        {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2},
    ),
    "roberta": (
        "RobertaForSequenceClassification",
        "RobertaConfig",
        {"hidden_size": 32, "intermediate_size": 64, **SMALL, "max_position_embeddings": 130, "pad_token_id": 0},
    ),
    "albert": (
        "AlbertForSequenceClassification",
        "AlbertConfig",
        {"embedding_size": 16, "hidden_size": 32, "intermediate_size": 64, **SMALL},
    ),
    "deberta_v2": (
        "DebertaV2ForSequenceClassification",
        "DebertaV2Config",
        {"hidden_size": 32, "intermediate_size": 64, **SMALL},
    ),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_squat_student_of_the_family_trains_and_exports_through_the_parity_gate(family, tmp_path):
    cls, config, sizes = FAMILIES[family]
    tok = _tokenizer()
    torch.manual_seed(0)
    getattr(transformers, cls)(getattr(transformers, config)(vocab_size=len(tok), **sizes)).save_pretrained(
        tmp_path / "m"
    )
    tok.save_pretrained(tmp_path / "m")
    lm = cls.endswith("CausalLM")
    model = {"source": "hf", "pretrained": str(tmp_path / "m")}
    held_out = {"test_lines": [41, 60]} if lm else {"test_fraction": 0.2}
    cfg = {
        "model": model if lm else {**model, "task": "sequence_classification", "num_classes": 3},
        "data": {
            "format": "text",
            "root": str(SAMPLE),
            "block_size": 16,
            "batch_size": 4,
            "cache_dir": False,
            **held_out,
        },
        "quant": {"method": "lsq", "weight_bits": 4, "act_bits": 8, "act_granularity": "token"},
        "method": {"name": "squat"},
        "train": {"epochs": 1, "max_steps": 2, "lr": 1e-3, "progress": False, "device": "cpu"},
        "eval": {"context": 32, "stride": 16},
        "calib_images": 4,
        "out": str(tmp_path / "run"),
    }
    res = run_experiment(RunConfig.from_dict(cfg))
    assert res["labels_used"] is False and torch.isfinite(torch.tensor(res["ppl" if lm else "top1"]))
    report = export_run(tmp_path / "run", "packed" if lm else "onnx", images=64)
    assert report["parity"]["top1_agreement"] == 100.0
    if lm:
        assert report["parity"]["bit_exact"]

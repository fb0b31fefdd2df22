"""Loading Hugging Face teachers offline: tasks inferred, one-line errors for what a user can fix."""

from __future__ import annotations

import pytest

from qdistill.errors import CheckpointError, ConfigError, MissingFileError
from qdistill.experiment import RunConfig
from qdistill.models.hf import load_hf_model


@pytest.mark.parametrize(
    ("fixture", "task", "cls"),
    [
        ("tiny_llama", "causal_lm", "LlamaForCausalLM"),
        ("tiny_gpt2", "causal_lm", "GPT2LMHeadModel"),
        ("tiny_bert", "sequence_classification", "BertForSequenceClassification"),
    ],
)
def test_task_is_read_from_the_config(fixture, task, cls, request) -> None:
    model, got = load_hf_model(str(request.getfixturevalue(fixture)))
    assert got == task and type(model).__name__ == cls and not model.training
    assert all(p.dtype.is_floating_point and p.dtype.itemsize == 4 for p in model.parameters())


def test_num_labels_replaces_the_head(tiny_bert) -> None:
    model, _ = load_hf_model(str(tiny_bert), "sequence_classification", num_labels=5)
    assert model.classifier.out_features == 5


def test_user_errors_are_one_line_qdistill_errors(tiny_llama, tmp_path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file" * 8)
    with pytest.raises(CheckpointError, match="GGUF"):
        load_hf_model(str(bad))
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"x")
    with pytest.raises(ConfigError, match="not .gguf"):
        load_hf_model(str(weights))
    with pytest.raises(MissingFileError, match="does not exist"):
        load_hf_model(str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match="model.task: unknown"):
        load_hf_model(str(tiny_llama), task="translation")
    with pytest.raises(ConfigError, match="model.task: unknown"):
        RunConfig.from_dict({"model": {"source": "hf", "pretrained": str(tiny_llama), "task": "translation"}})

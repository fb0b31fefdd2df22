"""Tiny random-init transformers models shared by the tests: seeded, built from configs, nothing
downloaded. Keyword arguments override the config's defaults."""

from __future__ import annotations

from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

LAYERS = {"num_hidden_layers": 2, "num_attention_heads": 2}


def _build(model: str, config: str, seed: int, defaults: dict[str, Any], overrides: dict[str, Any]) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = getattr(transformers, config)(**{**LAYERS, **defaults, **overrides})
    return getattr(transformers, model)(cfg).eval()


def family(model: str, config: str, seed: int = 0, **overrides: Any) -> torch.nn.Module:
    """Any transformers family by its model and config class names: 2 blocks of 2 heads, ``overrides``."""
    return _build(model, config, seed, {}, overrides)


def llama(seed: int = 0, **overrides: Any) -> torch.nn.Module:
    """A 2-block LlamaForCausalLM, width 16, vocabulary 12."""
    defaults = {"vocab_size": 12, "hidden_size": 16, "intermediate_size": 24, "num_key_value_heads": 1}
    return _build("LlamaForCausalLM", "LlamaConfig", seed, defaults | {"max_position_embeddings": 16}, overrides)


def gpt2(seed: int = 0, **overrides: Any) -> torch.nn.Module:
    """A 2-block GPT2LMHeadModel (Conv1D layers, tied lm_head), width 32, vocabulary 100, no KV cache."""
    defaults = {"n_embd": 32, "vocab_size": 100, "n_positions": 16, "use_cache": False}
    return _build("GPT2LMHeadModel", "GPT2Config", seed, defaults, overrides)


def bert_classifier(seed: int = 0, **overrides: Any) -> torch.nn.Module:
    """A 2-layer BertForSequenceClassification, width 32, vocabulary 100, 3 labels."""
    defaults = {"vocab_size": 100, "hidden_size": 32, "intermediate_size": 64, "num_labels": 3}
    return _build("BertForSequenceClassification", "BertConfig", seed, defaults, overrides)


def vit_classifier(seed: int = 0, **overrides: Any) -> torch.nn.Module:
    """A 2-layer ViTForImageClassification on 16x16 images, patches of 8, width 32, 3 labels."""
    defaults = {"image_size": 16, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64, "num_labels": 3}
    return _build("ViTForImageClassification", "ViTConfig", seed, defaults, overrides)

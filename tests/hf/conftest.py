"""Tiny random-init Hugging Face models (Llama-, GPT-2- and BERT-like) with a byte-level BPE tokenizer
trained on the committed sample text, saved with ``save_pretrained`` into a temporary folder (no download)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

SAMPLE = Path(__file__).with_name("sample.txt")  # 60 made-up lines "<Book><chapter>:<verse> <text>"


def _tokenizer(vocab_size: int = 300) -> transformers.PreTrainedTokenizerFast:
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<eos>"], initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train([str(SAMPLE)], trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>")


def _configs(vocab: int) -> dict[str, object]:
    small = {"vocab_size": vocab, "num_hidden_layers": 2, "num_attention_heads": 2}
    return {
        "llama": transformers.LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_key_value_heads=2,
            max_position_embeddings=128,
            tie_word_embeddings=True,
            **small,
        ),
        "gpt2": transformers.GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=2, n_positions=128),
        "bert": transformers.BertConfig(
            hidden_size=32, intermediate_size=64, max_position_embeddings=128, num_labels=3, **small
        ),
    }


_CLASSES = {"llama": "LlamaForCausalLM", "gpt2": "GPT2LMHeadModel", "bert": "BertForSequenceClassification"}


def save_tiny(kind: str, folder: Path, seed: int = 0) -> Path:
    """A random-init model of ``kind`` and the sample tokenizer, saved into ``folder``."""
    tok = _tokenizer()
    torch.manual_seed(seed)
    model = getattr(transformers, _CLASSES[kind])(_configs(len(tok))[kind]).eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny("llama", tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny("gpt2", tmp_path_factory.mktemp("gpt2"))


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny("bert", tmp_path_factory.mktemp("bert"))

"""Sliding-window perplexity against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from qdistill.errors import ConfigError, DataError
from qdistill.models.hf import load_hf_model
from qdistill.train.lm_eval import lm_metrics, windows


class Bigram(nn.Module):
    """Logits depend on the current token only: any window gives the same prediction for a token."""

    def __init__(self, vocab: int = 11) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.table = nn.Embedding(vocab, vocab)

    def forward(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.table(input_ids)}


def _plain_nll(log_probs_of_next, ids: list[int]) -> float:
    """Mean negative log-likelihood of tokens 1..N-1, one position at a time."""
    total = 0.0
    for t in range(1, len(ids)):
        total -= log_probs_of_next(ids[:t])[ids[t]]
    return total / (len(ids) - 1)


def test_full_context_perplexity_is_exp_of_the_mean_nll_of_every_prefix(tiny_llama) -> None:
    model, _ = load_hf_model(str(tiny_llama))
    ids = torch.randint(0, 300, (40,), generator=torch.Generator().manual_seed(0))

    def next_log_probs(prefix: list[int]) -> list[float]:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prefix])).logits[0, -1]
        return torch.log_softmax(logits.double(), -1).tolist()

    expected = math.exp(_plain_nll(next_log_probs, ids.tolist()))
    got = lm_metrics(model, ids, context=64, stride=48)  # one window holds the whole text
    assert got["eval_tokens"] == 39
    assert got["ppl"] == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize(("context", "stride"), [(4, 1), (5, 3), (8, 7), (16, 8)])
def test_sliding_windows_score_every_token_once(context: int, stride: int) -> None:
    model = Bigram()
    ids = torch.randint(0, 11, (37,), generator=torch.Generator().manual_seed(2))
    table = torch.log_softmax(model.table.weight.detach().double(), -1)
    expected = math.exp(_plain_nll(lambda prefix: table[prefix[-1]].tolist(), ids.tolist()))
    got = lm_metrics(model, ids, context, stride)
    assert got["eval_tokens"] == 36
    assert got["ppl"] == pytest.approx(expected, rel=1e-5)


def test_every_target_sees_at_least_context_minus_stride_tokens() -> None:
    for start, first, end in windows(100, context=10, stride=4):
        assert end - start <= 10
        assert first - start >= min(first, 10 - 4)


def test_teacher_metrics_of_a_model_against_itself_and_a_changed_copy() -> None:
    model, other = Bigram(), Bigram()
    ids = torch.randint(0, 11, (30,), generator=torch.Generator().manual_seed(3))
    same = lm_metrics(model, ids, 8, 4, teacher=model)
    assert same["agreement"] == 100.0 and same["kl"] == pytest.approx(0.0, abs=1e-6)
    assert same["teacher_ppl"] == pytest.approx(same["ppl"])
    with torch.no_grad():
        other.table.weight.neg_()  # the opposite ranking for every token
    differ = lm_metrics(other, ids, 8, 4, teacher=model)
    assert differ["agreement"] == 0.0 and differ["kl"] > 0.1


def test_bad_window_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="stride"):
        windows(10, context=4, stride=4)
    with pytest.raises(DataError, match="at least 2"):
        windows(1, context=4, stride=2)

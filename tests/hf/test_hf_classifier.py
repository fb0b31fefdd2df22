"""Text classifiers (``model.task: sequence_classification``): a supervised teacher run, then a label-free student."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from qdistill.data.text_classes import TokenBatchLoader, split_prefixed_lines
from qdistill.errors import DataError
from qdistill.experiment import RunConfig, run_experiment
from qdistill.hf_experiment import _classifier_metrics, _predicted_classes, _test_index, evaluate_hf_run

SAMPLE = Path(__file__).with_name("sample.txt")


def test_prefix_is_the_label_and_is_stripped() -> None:
    lines = split_prefixed_lines(["Ge1:1 In the beginning", "1Sa2:3 Talk no more", "", "Ge1:2 And the earth"])
    assert lines.texts == ["In the beginning", "Talk no more", "And the earth"]
    assert lines.labels.tolist() == [0, 1, 0] and lines.names == ["Ge", "1Sa"]
    with pytest.raises(DataError, match="line 1"):
        split_prefixed_lines(["no prefix here"])


def _config(pretrained, out, method: str, quant) -> RunConfig:
    return RunConfig.from_dict(
        {
            "model": {"source": "hf", "pretrained": str(pretrained), "task": "sequence_classification"},
            "data": {
                "format": "text",
                "root": str(SAMPLE),
                "block_size": 24,
                "test_fraction": 0.25,
                "val_fraction": 0.1,
                "batch_size": 8,
                "eval_batch_size": 16,
            },
            "quant": quant,
            "method": {"name": method},
            "train": {"epochs": 2, "lr": 1e-3, "progress": False, "device": "cpu"},
            "calib_images": 8,
            "out": str(out),
        }
    )


def test_teacher_with_labels_then_label_free_student_never_sees_labels(tiny_bert, tmp_path, monkeypatch) -> None:
    teacher = run_experiment(_config(tiny_bert, tmp_path / "teacher", "qat", None))
    assert teacher["labels_used"] is True and teacher["classes"] == 3
    assert 0 <= teacher["top1"] <= 100 and teacher["rtn_top1"] is None  # no quantizer: no RTN baseline
    seen = []
    original = TokenBatchLoader._batch

    def spy(self, index, epoch, batch):
        out = original(self, index, epoch, batch)
        seen.append(set(out))
        return out

    monkeypatch.setattr(TokenBatchLoader, "_batch", spy)
    quant = {"method": "lsq", "weight_bits": 4, "act_bits": 8, "act_granularity": "token"}
    res = run_experiment(
        _config(tmp_path / "teacher", tmp_path / "student", "sqakd", quant)
    )  # the run folder is the teacher
    assert res["labels_used"] is False
    assert res["gap"] == pytest.approx(res["top1"] - res["teacher_top1"])
    assert res["teacher_top1"] == pytest.approx(teacher["top1"])  # the fine-tuned teacher, reloaded from its run
    assert 0 <= res["rtn_top1"] <= 100 and 0 <= res["rtn_agreement"] <= 100
    again = evaluate_hf_run(tmp_path / "student")
    assert again["top1"] == pytest.approx(res["top1"]) and again["teacher_top1"] == pytest.approx(res["teacher_top1"])
    assert again["agreement"] == pytest.approx(res["agreement"])
    training = [keys for keys in seen if "labels" not in keys]
    assert training and all(keys == {"input_ids", "attention_mask"} for keys in training)


class _PicksToken(nn.Module):
    """A 3-class 'classifier' that predicts the token at ``column`` (a one-hot logit row)."""

    def __init__(self, column: int) -> None:
        super().__init__()
        self.column = column

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(input_ids[:, self.column], 3).float()


def test_classifier_metrics_count_lines_where_student_and_teacher_agree() -> None:
    ids = torch.tensor([[0, 0], [1, 2], [2, 2], [1, 0], [2, 1]])
    test = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 1, 2, 0, 2])}
    student, teacher = (_predicted_classes(_PicksToken(c), test, batch=2, device="cpu") for c in (0, 1))
    # student predicts 0 1 2 1 2 (4 of 5 right), teacher 0 2 2 0 1 (3 of 5 right); they agree on lines 0 and 2
    assert student.tolist() == [0, 1, 2, 1, 2] and teacher.tolist() == [0, 2, 2, 0, 1]
    got = _classifier_metrics(student, teacher, test["labels"])
    assert got == pytest.approx({"top1": 80.0, "teacher_top1": 60.0, "gap": 20.0, "agreement": 40.0})
    assert _classifier_metrics(student, teacher, test["labels"], "rtn_") == pytest.approx(
        {"rtn_top1": 80.0, "rtn_agreement": 40.0}
    )


def test_capped_test_lines_are_a_seeded_sample_of_every_book_not_the_first_lines() -> None:
    held = np.zeros(20_000, dtype=bool)
    held[::2] = True  # 10,000 held-out lines in book order: book = line // 2,000
    index = _test_index(held, 500, seed=0)
    assert len(set(index.tolist())) == 500 and held[index].all()
    assert set((index // 2_000).tolist()) == set(range(10))  # the first 500 held-out lines are all book 0
    assert np.array_equal(index, _test_index(held, 500, seed=0))
    assert np.array_equal(_test_index(held, None, seed=0), np.flatnonzero(held))

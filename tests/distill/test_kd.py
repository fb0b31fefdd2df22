"""kd_loss and the logit objectives against hand-computed values, on [B, C] and on [B, T, V] with a mask.

Hand values: with T = 1, a student at [0, 0] (p_S = [1/2, 1/2]) and a teacher at [ln 3, 0]
(p_T = [3/4, 1/4]):
    KL(p_T || p_S) = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.1308121...
    KL(p_S || p_T) = 1/2 ln(2/3) + 1/2 ln(2)   = 0.1438410...
"""

import math

import pytest
import torch
from torch import nn

from qdistill.distill import build_objective, kd_loss
from qdistill.distill.kd import ce_loss
from qdistill.errors import DataError

KL_TS = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
KL_ST = 0.5 * math.log(2 / 3) + 0.5 * math.log(2.0)
STUDENT = torch.tensor([[0.0, 0.0]])
TEACHER = torch.tensor([[math.log(3.0), 0.0]])


def test_direction_is_kl_teacher_to_student():
    assert float(kd_loss(STUDENT, TEACHER, temperature=1.0)) == pytest.approx(KL_TS, rel=1e-6)
    assert float(kd_loss(TEACHER, STUDENT, temperature=1.0)) == pytest.approx(KL_ST, rel=1e-6)


def test_temperature_squared_scaling():
    # at T = 2, logits twice as large give the same softened distributions: the loss is 4 * KL
    assert float(kd_loss(2 * STUDENT, 2 * TEACHER, temperature=2.0)) == pytest.approx(4 * KL_TS, rel=1e-6)


def test_batchmean_on_batch_by_classes():
    student = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    teacher = torch.tensor([[math.log(3.0), 0.0], [1.0, 2.0]])  # the second row contributes 0
    assert float(kd_loss(student, teacher, temperature=1.0)) == pytest.approx(KL_TS / 2, rel=1e-6)


def test_tokens_with_a_mask_average_over_unmasked_positions_and_ignore_garbage():
    student = torch.zeros(1, 3, 2)
    teacher = torch.tensor([[[math.log(3.0), 0.0], [5.0, 5.0], [0.0, 0.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert float(kd_loss(student, teacher, 1.0, mask)) == pytest.approx(KL_TS / 2, rel=1e-6)
    garbage_s = student.clone()
    garbage_s[0, 2] = torch.tensor([float("nan"), 1e30])
    garbage_t = teacher.clone()
    garbage_t[0, 2] = torch.tensor([-1e30, float("inf")])
    s = garbage_s.clone().requires_grad_(True)
    loss = kd_loss(s, garbage_t, 1.0, mask)
    assert float(loss.detach()) == pytest.approx(KL_TS / 2, rel=1e-6)
    loss.backward()
    assert torch.isfinite(s.grad).all() and torch.equal(s.grad[0, 2], torch.zeros(2))
    # without a mask every position counts: (KL_TS + 0 + 0) / 3
    assert float(kd_loss(student, teacher, 1.0)) == pytest.approx(KL_TS / 3, rel=1e-6)


def test_model_outputs_and_dicts_are_read_through_logits():
    transformers = pytest.importorskip("transformers")
    out = transformers.modeling_outputs.SequenceClassifierOutput(logits=STUDENT)
    assert float(kd_loss(out, {"logits": TEACHER}, 1.0)) == pytest.approx(KL_TS, rel=1e-6)


def test_shape_mismatches_are_data_errors():
    with pytest.raises(DataError, match="differ in shape"):
        kd_loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(DataError, match="mask"):
        kd_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), mask=torch.ones(2, 4))


def test_ce_loss_skips_masked_tokens():
    logits = torch.tensor([[[math.log(3.0), 0.0], [0.0, 0.0], [9.0, -9.0]]])
    labels = torch.tensor([[0, 1, 1]])
    expected = (-math.log(0.75) - math.log(0.5)) / 2
    assert float(ce_loss(logits, labels, torch.tensor([[1, 1, 0]]))) == pytest.approx(expected, rel=1e-6)


class TinyLM(nn.Module):
    """``model(input_ids=..., attention_mask=...)`` -> dict with [B, T, V] logits (one logit row per token id)."""

    def __init__(self, vocab: int = 5) -> None:
        super().__init__()
        self.table = nn.Embedding(vocab, vocab)

    def forward(self, input_ids, attention_mask=None):
        return {"logits": self.table(input_ids)}


@pytest.mark.parametrize("method", ["sqakd", "ce_kd", "qat"])
def test_objectives_take_dict_batches_and_skip_padding(method):
    torch.manual_seed(0)
    student, teacher = TinyLM(), TinyLM()
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    ids = torch.tensor([[1, 2, 3, 0], [4, 1, 0, 0]])
    labels = torch.tensor([[2, 3, 4, 0], [1, 0, 0, 0]])
    objective = build_objective(method, student, teacher if method != "qat" else None)
    use = labels if objective.uses_labels else None
    loss, _ = objective({"input_ids": ids, "attention_mask": mask}, use)
    padded = torch.where(mask.bool(), ids, torch.full_like(ids, 3))  # other tokens at the padding
    relabelled = torch.where(mask.bool(), labels, torch.full_like(labels, 4))
    again, _ = objective({"input_ids": padded, "attention_mask": mask}, relabelled if use is not None else None)
    assert float(again.detach()) == pytest.approx(float(loss.detach()), rel=1e-6)
    kd = kd_loss(student.table(ids), teacher.table(ids), 4.0, mask)
    ce = ce_loss(student.table(ids), labels, mask)
    expected = {"sqakd": kd, "ce_kd": 0.5 * ce + 0.5 * kd, "qat": ce}[method]
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)

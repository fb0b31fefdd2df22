"""The parity figures: raw and margin-aware top-1 agreement against hand-computed values."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from qdistill.export.parity import compare_logits, decision_tolerance, label_top1


def test_disagreements_count_only_where_the_reference_margin_exceeds_the_tolerance():
    reference = np.array([[1.0, 0.9999], [3.0, 0.0], [0.0, 1.0], [2.0, 0.0]], dtype=np.float32)
    other = np.array([[0.9999, 1.0], [0.0, 3.0], [0.0, 1.0], [2.0, 0.5]], dtype=np.float32)
    p = compare_logits(reference, other, tolerance=np.full(4, 0.01))
    assert p["top1_agreement"] == 50.0  # rows 0 and 1 disagree
    assert p["decisive_images"] == 3  # row 0's margin 1e-4 is below 0.01
    assert abs(p["top1_agreement_decisive"] - 200 / 3) < 1e-9  # rows 2 and 3 of the decisive 1, 2, 3
    assert abs(p["max_abs_logit_diff"] - 3.0) < 1e-6


def test_exact_ties_are_not_decisions_and_no_decision_means_no_disagreement():
    tied = np.zeros((2, 3), dtype=np.float32)
    p = compare_logits(tied, np.array([[0, 1, 0], [0, 0, 1]], dtype=np.float32))
    assert p["top1_agreement"] == 0.0 and p["decisive_images"] == 0 and p["top1_agreement_decisive"] == 100.0


def test_tolerance_is_the_float64_change_of_the_model():
    """1e8 + 1 is 1e8 in float32: the float64 re-evaluation moves that logit by exactly 1, so the
    first image's margin tolerance is 2. The second image is exact in float32 (change 0): it gets
    the floor, twice the 90th percentile of the changes [1, 0], i.e. 2 x 0.9."""
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 1.0], [0.0, 1.0]]))
    images = torch.tensor([[1e8, 1.0], [2.0, 3.0]])
    logits = model(images).detach().numpy()
    tol = decision_tolerance(model, images, logits)
    assert tol.tolist() == [2.0, 2 * 0.9]


def test_label_top1_by_hand():
    trained = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    exported = np.array([[0.9, 0.1], [0.7, 0.3], [0.6, 0.4], [0.3, 0.7]])  # row 1 flips
    labels = torch.tensor([0, 1, 1, 1])
    assert label_top1(trained, exported, labels) == {"top1_trained": 75.0, "top1_exported": 50.0}
    assert label_top1(trained, exported, None) == {}

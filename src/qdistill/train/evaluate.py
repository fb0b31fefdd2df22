"""Evaluation: top-1/top-5 when labels exist, teacher-student agreement always.

Works on any iterable of batches (see qdistill/batch.py) and on classifier logits ``[B, C]`` as
well as per-token logits ``[B, T, V]``: then every position counts once, except padding
(``attention_mask == 0``) and labels of -100 (the Hugging Face "ignore" value).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from qdistill.batch import batch_size, call_model, logits_of, split_batch, to_device
from qdistill.errors import DataError

__all__ = ["evaluate"]

IGNORE_INDEX = -100


def _positions(inputs: object, logits: Tensor) -> Tensor:
    """Boolean mask over the prediction positions of a batch (all of them for classifiers)."""
    keep = torch.ones(logits.shape[:-1], dtype=torch.bool, device=logits.device)
    mask = inputs.get("attention_mask") if isinstance(inputs, Mapping) else None
    if mask is not None and logits.dim() == 3:
        keep &= mask.to(logits.device).bool()
    return keep


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: Iterable, teacher: nn.Module | None = None, device: str | torch.device = "cpu"
) -> dict[str, float]:
    """Accuracy (percent) of ``model`` and, with a teacher, the share of matching top-1 predictions.

    ``images`` is the number of examples seen; the percentages are over prediction positions.
    """
    was = model.training
    model.eval()
    n = positions = top1 = top5 = agree = 0
    labelled = False
    try:
        for batch in loader:
            inputs, labels = split_batch(batch)
            inputs = to_device(inputs, device)
            logits = logits_of(call_model(model, inputs)).float()
            keep = _positions(inputs, logits)
            n += batch_size(inputs)
            if labels is not None:
                labels = labels.to(logits.device)
                if labels.shape != logits.shape[:-1]:
                    raise DataError(f"labels of shape {tuple(labels.shape)} do not fit logits {tuple(logits.shape)}")
                labelled = True
                keep &= labels != IGNORE_INDEX
                k = min(5, logits.shape[-1])
                topk = logits.topk(k, dim=-1).indices
                top1 += int(((topk[..., 0] == labels) & keep).sum())
                top5 += int(((topk == labels[..., None]).any(dim=-1) & keep).sum())
            positions += int(keep.sum())
            if teacher is not None:
                t = logits_of(call_model(teacher, inputs))
                agree += int(((t.argmax(-1) == logits.argmax(-1)) & keep).sum())
    finally:
        model.train(was)
    out: dict[str, float] = {"images": float(n)}
    if positions and labelled:
        out["top1"], out["top5"] = 100.0 * top1 / positions, 100.0 * top5 / positions
    if positions and teacher is not None:
        out["agreement"] = 100.0 * agree / positions
    return out

"""Evaluation: top-1/top-5 when labels exist, teacher-student agreement always."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

__all__ = ["evaluate", "split_batch"]


def split_batch(batch: Tensor | tuple | list) -> tuple[Tensor, Tensor | None]:
    """A loader yields images alone (label-free) or (images, labels)."""
    if isinstance(batch, (tuple, list)):
        return batch[0], batch[1]
    return batch, None


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: Iterable, teacher: nn.Module | None = None, device: str | torch.device = "cpu"
) -> dict[str, float]:
    """Accuracy (percent) of ``model`` and, with a teacher, the share of matching top-1 predictions."""
    was = model.training
    model.eval()
    n = top1 = top5 = agree = 0
    labelled = False
    try:
        for batch in loader:
            images, labels = split_batch(batch)
            images = images.to(device)
            logits = model(images).float()
            n += images.shape[0]
            if labels is not None:
                labelled = True
                labels = labels.to(device)
                k = min(5, logits.shape[1])
                topk = logits.topk(k, dim=1).indices
                top1 += int((topk[:, 0] == labels).sum())
                top5 += int((topk == labels[:, None]).any(dim=1).sum())
            if teacher is not None:
                agree += int((teacher(images).argmax(1) == logits.argmax(1)).sum())
    finally:
        model.train(was)
    out: dict[str, float] = {"images": float(n)}
    if n and labelled:
        out["top1"], out["top5"] = 100.0 * top1 / n, 100.0 * top5 / n
    if n and teacher is not None:
        out["agreement"] = 100.0 * agree / n
    return out

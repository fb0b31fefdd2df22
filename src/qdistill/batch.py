"""What a batch is, for every loop in qdistill: images, (inputs, labels) tuples, or dict batches.

Users bring a torch DataLoader, qdistill's `BatchLoader`, or a Hugging Face style iterable of
dicts (``input_ids``, ``attention_mask``, optional ``labels``); model outputs may be tensors,
``ModelOutput``s or dicts with ``logits``. These helpers are the one place that knows the shapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["Inputs", "batch_size", "call_model", "logits_of", "split_batch", "to_device"]

Inputs = Tensor | Mapping[str, Any]


def split_batch(batch: Any) -> tuple[Inputs, Tensor | None]:
    """(inputs, labels or None) from images, ``(images, labels)``, or a dict with optional ``labels``."""
    if isinstance(batch, Mapping):
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return inputs, batch.get("labels")
    if isinstance(batch, (tuple, list)):
        return batch[0], (batch[1] if len(batch) > 1 else None)
    return batch, None


def to_device(inputs: Inputs, device: torch.device | str) -> Inputs:
    """Move a tensor, or every tensor of a dict batch, to ``device``."""
    if isinstance(inputs, Mapping):
        return {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in inputs.items()}
    return inputs.to(device, non_blocking=True)


def call_model(model: nn.Module, inputs: Inputs) -> Any:
    """``model(**inputs)`` for dict batches, ``model(inputs)`` otherwise."""
    return model(**inputs) if isinstance(inputs, Mapping) else model(inputs)


def logits_of(output: Any) -> Tensor:
    """The logits of a model output: a tensor, a ``ModelOutput``/dict with ``logits``, or a tuple's first item."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping) and "logits" in output:
        return output["logits"]
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise TypeError(f"cannot find logits in a model output of type {type(output).__name__}")


def batch_size(inputs: Inputs) -> int:
    """Number of examples in a batch (first dimension of its first tensor)."""
    if isinstance(inputs, Mapping):
        return int(next(v for v in inputs.values() if isinstance(v, Tensor)).shape[0])
    return int(inputs.shape[0])

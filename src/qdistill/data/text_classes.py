"""Labelled lines for text classifiers: ``<Label><n>:<m> <text>`` lines (a KJV verse and its book).

The label is the prefix before the first ``<digits>:<digits>``, stripped from the text so the
classifier must read the verse. Labels are numbered in order of first appearance; the held-out
lines are a seeded random share, so every label appears on both sides.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import DataError
from .loader import EpochLoader, Index, take

__all__ = ["LabelledLines", "TokenBatchLoader", "split_prefixed_lines"]

_PREFIX = re.compile(r"^(\d*[^\d\s]+)\d+:\d+\s+(.*\S)")


@dataclass(frozen=True)
class LabelledLines:
    texts: list[str]
    labels: np.ndarray  # int64 [N]
    names: list[str]  # label index -> prefix


def split_prefixed_lines(units: Sequence[str]) -> LabelledLines:
    """(texts without their prefix, label ids, label names) of ``Book1:2 text`` lines; blank lines skipped."""
    texts, labels, names = [], [], {}
    for number, line in enumerate(units, 1):
        if not line.strip():
            continue
        m = _PREFIX.match(line)
        if m is None:
            raise DataError(f"line {number}: expected '<Label><chapter>:<verse> <text>', got {line[:40]!r}")
        labels.append(names.setdefault(m.group(1), len(names)))
        texts.append(m.group(2))
    return LabelledLines(texts, np.asarray(labels, dtype=np.int64), list(names))


class TokenBatchLoader(EpochLoader):
    """Dict batches of padded token rows (``input_ids``, ``attention_mask``; ``labels`` only when
    ``with_labels``), in an order fixed by ``(seed, epoch)``."""

    def __init__(
        self,
        tensors: dict[str, torch.Tensor],
        batch_size: int,
        *,
        with_labels: bool,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
    ) -> None:
        keys = [k for k in tensors if with_labels or k != "labels"]
        self._tensors = {k: tensors[k] for k in keys}
        super().__init__(len(tensors["input_ids"]), batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed)

    def _batch(self, index: Index, epoch: int, batch: int) -> dict[str, torch.Tensor]:
        return {k: take(v, index) for k, v in self._tensors.items()}

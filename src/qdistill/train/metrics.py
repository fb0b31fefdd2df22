"""Per-epoch metrics to CSV, JSON and (optionally) TensorBoard."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

__all__ = ["MetricsLog"]


class MetricsLog:
    """Appends one row per epoch; rewrites ``metrics.json`` and ``metrics.csv`` each time.

    Rewriting the whole (small) files keeps them consistent with the checkpoint after a resume.
    """

    def __init__(self, out_dir: Path | None, tensorboard: bool = False, history: list[dict[str, Any]] | None = None):
        self.out_dir = out_dir
        self.rows: list[dict[str, Any]] = list(history or [])
        self._tb = None
        if tensorboard and out_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise RuntimeError("train.tensorboard needs the tensorboard package: pip install tensorboard") from e
            self._tb = SummaryWriter(str(out_dir / "tensorboard"))

    def log(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if self.out_dir is None:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "metrics.json").write_text(json.dumps(self.rows, indent=1))
        keys = list(dict.fromkeys(k for r in self.rows for k in r))
        with open(self.out_dir / "metrics.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(self.rows)
        if self._tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "epoch":
                    self._tb.add_scalar(k, v, row["epoch"])
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()

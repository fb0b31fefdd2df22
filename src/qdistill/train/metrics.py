"""Per-epoch metrics to CSV and JSON, and optionally TensorBoard: trainer callbacks."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qdistill.errors import ConfigError
from qdistill.train.callbacks import Callback

if TYPE_CHECKING:
    from qdistill.train.trainer import Trainer

__all__ = ["MetricsLog", "TensorBoardLog"]


class MetricsLog(Callback):
    """Rewrites ``metrics.json`` and ``metrics.csv`` from ``trainer.history`` after every epoch.

    Rewriting the whole (small) files keeps them consistent with the checkpoint after a resume.
    """

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        self.write(trainer.history)

    def write(self, rows: list[dict[str, Any]]) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "metrics.json").write_text(json.dumps(rows, indent=1))
        keys = list(dict.fromkeys(k for r in rows for k in r))
        with open(self.out_dir / "metrics.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)


class TensorBoardLog(Callback):
    """Every numeric metric of each epoch as a TensorBoard scalar under ``out_dir/tensorboard``."""

    def __init__(self, out_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("train.tensorboard needs the tensorboard package: pip install tensorboard") from None
        self._make = lambda: SummaryWriter(str(Path(out_dir) / "tensorboard"))
        self._writer = None

    def on_fit_start(self, trainer: Trainer) -> None:
        self._writer = self._make()

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        for k, v in row.items():
            if isinstance(v, (int, float)) and k != "epoch":
                self._writer.add_scalar(k, v, row["epoch"])
        self._writer.flush()

    def on_fit_end(self, trainer: Trainer) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

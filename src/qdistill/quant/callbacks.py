"""Training aids that belong to the quantizers, plugged into the generic trainer as callbacks.

The trainer knows no quantizer by name: it asks `training_callbacks` for what its config needs.
Callbacks follow the protocol of qdistill/train/callbacks.py (duck-typed: no import of the trainer).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from qdistill.quant.api import named_quantizers
from qdistill.quant.fake_quant import _COMPILED, use_compiled_kernels
from qdistill.quant.hessian import update_ewgs_delta

if TYPE_CHECKING:
    from qdistill.train.config import TrainConfig
    from qdistill.train.trainer import Trainer

__all__ = ["CompiledQuantizers", "EWGSDeltaUpdate", "training_callbacks"]


class CompiledQuantizers:
    """Fused quantizer kernels (`use_compiled_kernels`) for one fit; the global switch is restored after."""

    def __init__(self) -> None:
        self._was_on: bool | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        self._was_on = bool(_COMPILED)  # no public getter yet (quant/fake_quant.py)
        use_compiled_kernels(True)

    def on_fit_end(self, trainer: Trainer) -> None:
        if self._was_on is False:
            use_compiled_kernels(False)
        self._was_on = None


class EWGSDeltaUpdate:
    """Re-estimate EWGS's delta from the Hessian of the run's own loss every ``every`` epochs.

    The estimate is side-effect free: the buffers of student and objective (BatchNorm statistics,
    contrastive queues) are restored after its extra forwards. Logs ``ewgs_delta_mean``.
    """

    def __init__(self, every: int, batches: int = 1, probes: int = 2) -> None:
        self.every, self.batches, self.probes = every, batches, probes

    def on_epoch_start(self, trainer: Trainer, row: dict[str, Any]) -> None:
        student, objective = trainer.student, trainer.objective
        if trainer.epoch % self.every or not any(q.backward_mode == "ewgs" for _, q in named_quantizers(student)):
            return
        batches = trainer.sample_batches(self.batches)
        gen = torch.Generator().manual_seed(trainer.cfg.seed * 1000 + trainer.epoch)
        student.train()
        objective.train()
        deltas = update_ewgs_delta(student, batches, lambda b: objective(*b)[0], self.probes, gen, preserve=[objective])
        row["ewgs_delta_mean"] = float(np.mean(list(deltas.values())))


def training_callbacks(cfg: TrainConfig) -> list[Any]:
    """The quantizer callbacks a `TrainConfig` asks for (compiled kernels, EWGS delta updates)."""
    callbacks: list[Any] = [CompiledQuantizers()] if cfg.compile_quantizers else []
    if cfg.ewgs_every:
        callbacks.append(EWGSDeltaUpdate(cfg.ewgs_every, cfg.hessian_batches, cfg.hessian_probes))
    return callbacks

"""The trainer's callback protocol: loggers and training aids plug in without the trainer naming them.

A callback is any object with some of the methods of `Callback` (missing ones are skipped), so
quantizer-side aids (quant/callbacks.py) need not import the trainer. The events, in order:

* ``on_fit_start(trainer)``: after a resume, before the first epoch.
* ``on_epoch_start(trainer, row)``: before a fresh epoch (not when resuming mid-epoch); keys added
  to ``row`` (the epoch's metrics dict) are logged with it.
* ``on_step_end(trainer, logs)``: after each optimizer step, with that step's scalar logs as 0-dim
  float64 tensors on the device (``float(logs["loss"])`` reads one, at the cost of a host sync).
* ``on_epoch_end(trainer, row)``: after validation, with the epoch's full metrics, before the
  checkpoint is written (``trainer.history`` already holds ``row``).
* ``on_fit_end(trainer)``: always, also when training failed, so resources are released.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

    from qdistill.train.trainer import Trainer

__all__ = ["EVENTS", "Callback"]

EVENTS = ("on_fit_start", "on_epoch_start", "on_step_end", "on_epoch_end", "on_fit_end")


class Callback:
    """Base class with every event as a no-op; subclass and override what you need."""

    def on_fit_start(self, trainer: Trainer) -> None:
        """Training is about to start (or continue after a resume)."""

    def on_epoch_start(self, trainer: Trainer, row: dict[str, Any]) -> None:
        """A fresh epoch ``trainer.epoch`` (0-based) starts; ``row`` collects its metrics."""

    def on_step_end(self, trainer: Trainer, logs: dict[str, Tensor]) -> None:
        """One optimizer step finished; ``trainer.step`` steps of this epoch are done."""

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        """An epoch finished; ``row`` holds its training, validation and objective metrics."""

    def on_fit_end(self, trainer: Trainer) -> None:
        """Training ended, normally or with an error."""

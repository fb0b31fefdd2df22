"""Training: the one-phase trainer, evaluation and checkpoints."""

from qdistill.train.callbacks import Callback
from qdistill.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from qdistill.train.config import TrainConfig
from qdistill.train.evaluate import evaluate
from qdistill.train.trainer import Trainer

__all__ = ["Callback", "CheckpointError", "TrainConfig", "Trainer", "evaluate", "load_checkpoint", "save_checkpoint"]

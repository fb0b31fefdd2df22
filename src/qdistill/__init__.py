"""qdistill: accurate 1-8 bit models from a full-precision model, without labelled data.

The student is a quantized copy of the teacher trained to match it (SQAKD, SQuaT, GoR, ...).

Example:
    >>> import torch, qdistill
    >>> teacher = qdistill.create_model("resnet20").eval()
    >>> student = qdistill.make_student(teacher, qdistill.QuantConfig(method="ewgs", weight_bits=2, act_bits=2))
    >>> loss = qdistill.kd_loss(student(torch.randn(2, 3, 32, 32)), teacher(torch.randn(2, 3, 32, 32)))
"""

from qdistill.data import BatchLoader, load_dataset
from qdistill.distill import FeatureTaps, build_objective, kd_loss
from qdistill.distill.student import make_student
from qdistill.experiment import RunConfig, load_config, load_run, run_experiment
from qdistill.export.packed import load_packed
from qdistill.models import create_model, list_models
from qdistill.quant import QuantConfig, calibrate, convert, quantize
from qdistill.train import TrainConfig, Trainer, evaluate

__version__ = "0.1.0"

__all__ = [
    "BatchLoader",
    "FeatureTaps",
    "QuantConfig",
    "RunConfig",
    "TrainConfig",
    "Trainer",
    "build_objective",
    "calibrate",
    "convert",
    "create_model",
    "evaluate",
    "kd_loss",
    "list_models",
    "load_config",
    "load_dataset",
    "load_packed",
    "load_run",
    "make_student",
    "quantize",
    "run_experiment",
]

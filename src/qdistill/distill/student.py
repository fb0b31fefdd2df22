"""The SQAKD student: a quantized copy of the teacher."""

from __future__ import annotations

import copy

from torch import Tensor, nn

from qdistill.quant.api import quantize
from qdistill.quant.config import QuantConfig

__all__ = ["make_student"]


def make_student(teacher: nn.Module, config: QuantConfig | None, calib_data: Tensor | None = None) -> nn.Module:
    """Deep-copy ``teacher``, quantize the copy and calibrate it; the teacher is left untouched.

    ``config=None`` returns the trainable full-precision copy (FP KD, or a teacher trained from scratch).

    Starting from the teacher's weights is what lets a label-free KL loss work at all: the
    student begins close to the function it must imitate.
    """
    student = copy.deepcopy(teacher)
    student.requires_grad_(True)
    student.train()
    return student if config is None else quantize(student, config, calib_data=calib_data)

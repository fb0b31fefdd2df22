"""The SQAKD student: a quantized copy of the teacher."""

from __future__ import annotations

import copy

from torch import Tensor, nn

from qdistill.quant.api import quantize
from qdistill.quant.config import QuantConfig

__all__ = ["make_student"]


def make_student(teacher: nn.Module, config: QuantConfig, calib_data: Tensor | None = None) -> nn.Module:
    """Deep-copy ``teacher``, quantize the copy and calibrate it; the teacher is left untouched.

    Starting from the teacher's weights is what lets a label-free KL loss work at all: the
    student begins close to the function it must imitate.
    """
    student = copy.deepcopy(teacher)
    student.requires_grad_(True)
    student.train()
    return quantize(student, config, calib_data=calib_data)

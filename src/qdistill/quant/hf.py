"""The quantized twin of transformers' ``Conv1D`` (GPT-2's Linear with a transposed weight).

Imported only once transformers is: `quantize` registers it when ``transformers.pytorch_utils``
is already loaded (a model holding a Conv1D implies it is), so ``import qdistill`` never imports
transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers.pytorch_utils import Conv1D

from qdistill.quant.intform import IntLinear
from qdistill.quant.modules import QuantModule

if TYPE_CHECKING:
    from qdistill.quant.config import QuantConfig

__all__ = ["QHFConv1D"]


class QHFConv1D(QuantModule, Conv1D):
    """Conv1D (``y = x @ W + b`` with ``W`` of shape ``(in, out)``) with quantized input and weight.

    The weight quantizer sees ``W.t()``, output channel first like every other layer's weight.
    """

    features_last = True

    @classmethod
    def from_float(cls, conv: Conv1D, cfg: QuantConfig) -> QHFConv1D:
        with torch.device("meta"):  # the float layer's Parameters replace these
            q = cls(conv.nf, conv.nx)
        q.weight, q.bias = conv.weight, conv.bias
        q.attach_quantizers(cfg)
        return q

    def to_float(self) -> Conv1D:
        plain = Conv1D(self.nf, self.nx).to(device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            plain.weight.copy_(self.quant_weight().t())
            plain.bias.copy_(self.bias)
        return plain.train(self.training)

    def to_int(self) -> IntLinear:
        return IntLinear(self)  # Conv1D computes x @ W + b, a Linear with the transposed weight

    def oriented_weight(self) -> Tensor:
        return self.weight.t()

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.quant_input(x), self.quant_weight(), self.bias)

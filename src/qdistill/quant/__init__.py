"""Quantization core: quantizers, quantized layers, `quantize` and calibration."""

from qdistill.quant.api import (
    QUANT_MODULE_MAP,
    QuantSummary,
    calibrate,
    full_precision_layers,
    named_quantizers,
    quant_class,
    quantize,
    register_quant_module,
)
from qdistill.quant.base import QUANTIZERS, Interval, Quantizer
from qdistill.quant.config import QuantConfig
from qdistill.quant.convert import convert
from qdistill.quant.dorefa import DoReFaQuantizer
from qdistill.quant.dynamic import TokenQuantizer
from qdistill.quant.ewgs import EWGSQuantizer
from qdistill.quant.fake_quant import fake_quant
from qdistill.quant.hessian import update_ewgs_delta
from qdistill.quant.intform import InputGrid, IntConv, IntEmbedding, IntLinear, IntModule
from qdistill.quant.lsq import LSQQuantizer
from qdistill.quant.modules import QConv1d, QConv2d, QEmbedding, QLinear, QuantModule
from qdistill.quant.pact import PACTQuantizer

__all__ = [
    "QUANTIZERS",
    "QUANT_MODULE_MAP",
    "DoReFaQuantizer",
    "EWGSQuantizer",
    "InputGrid",
    "IntConv",
    "IntEmbedding",
    "IntLinear",
    "IntModule",
    "Interval",
    "LSQQuantizer",
    "PACTQuantizer",
    "QConv1d",
    "QConv2d",
    "QEmbedding",
    "QLinear",
    "QuantConfig",
    "QuantModule",
    "QuantSummary",
    "Quantizer",
    "TokenQuantizer",
    "calibrate",
    "convert",
    "fake_quant",
    "full_precision_layers",
    "named_quantizers",
    "quant_class",
    "quantize",
    "register_quant_module",
    "update_ewgs_delta",
]

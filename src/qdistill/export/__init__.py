"""Deployment: QDQ ONNX for integer runtimes, bit-packed safetensors, parity checks, model cards.

onnx and onnxruntime are imported inside the functions that need them, so ``import qdistill``
needs only torch.
"""

from qdistill.export.bench import compare, measure
from qdistill.export.card import write_model_card
from qdistill.export.hf_packed import export_hf_packed, load_hf_packed
from qdistill.export.onnx import export_onnx, float_twin, snap_biases
from qdistill.export.packed import export_packed, load_packed
from qdistill.export.parity import compare_logits, onnx_parity

__all__ = [
    "compare",
    "compare_logits",
    "export_hf_packed",
    "export_onnx",
    "export_packed",
    "float_twin",
    "load_hf_packed",
    "load_packed",
    "measure",
    "onnx_parity",
    "snap_biases",
    "write_model_card",
]

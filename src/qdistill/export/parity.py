"""Parity of an export with the trained model: max |logit difference| and top-1 agreement.

BatchNorm folding and integer requantization change float rounding, so the exported model is
compared on real inputs rather than bit for bit; an export below the agreement threshold is
refused before anything is written.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["compare_logits", "onnx_logits", "onnx_parity", "require_parity", "torch_logits"]


@torch.no_grad()
def torch_logits(model: nn.Module, images: Tensor, batch: int = 256) -> np.ndarray:
    """Logits of ``model`` (eval mode) on ``images``, batched."""
    model.eval()
    return torch.cat([model(images[i : i + batch]) for i in range(0, len(images), batch)]).float().numpy()


def onnx_logits(session: Any, images: Tensor, batch: int = 256) -> np.ndarray:
    name = session.get_inputs()[0].name
    x = images.float().numpy()
    return np.concatenate([session.run(None, {name: x[i : i + batch]})[0] for i in range(0, len(x), batch)])


def compare_logits(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """``max_abs_logit_diff`` and ``top1_agreement`` (percent) of two logit arrays."""
    if reference.shape != other.shape:
        raise ValueError(f"logit shapes differ: {reference.shape} vs {other.shape}")
    return {
        "images": int(len(reference)),
        "max_abs_logit_diff": float(np.abs(reference - other).max()),
        "top1_agreement": float((reference.argmax(1) == other.argmax(1)).mean() * 100),
    }


def onnx_parity(model: nn.Module, onnx_model: Any, images: Tensor, threads: int = 2) -> dict[str, float]:
    """Run the PyTorch model and the ONNX model (bytes, path or ModelProto) on ``images`` and compare."""
    from qdistill.export.bench import ort_session

    src = onnx_model.SerializeToString() if hasattr(onnx_model, "SerializeToString") else onnx_model
    return compare_logits(torch_logits(model, images), onnx_logits(ort_session(src, threads), images))


def require_parity(parity: dict[str, float], min_agreement: float, what: str) -> None:
    """Raise RuntimeError (and so write nothing) when top-1 agreement is below ``min_agreement`` percent."""
    if parity["top1_agreement"] < min_agreement:
        raise RuntimeError(
            f"parity check failed for {what}: top-1 agreement {parity['top1_agreement']:.2f}% < {min_agreement}% "
            f"(max |logit diff| {parity['max_abs_logit_diff']:.4g} on {parity['images']} images); nothing written"
        )

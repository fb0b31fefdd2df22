"""Parity of an export with the trained model: max |logit difference| and top-1 agreement.

BatchNorm folding and integer requantization change float rounding, so the exported model is
compared on real inputs rather than bit for bit; an export below the agreement threshold is
refused before anything is written.

Top-1 agreement is reported twice. ``top1_agreement`` counts every image. A top-1 decision is
only meaningful, though, where the trained model's own float32 arithmetic settles it: a random
initialised network whose logits are 1e-9 apart flips its top-1 between float32 and float64
evaluation of the very same weights. ``top1_agreement_decisive`` therefore counts only the
images whose top-2 margin exceeds twice the largest change of any of their logits when the
trained model is re-evaluated in float64 (a margin moves by at most that much when each logit
moves by the change), or twice the 90th percentile of that change over all images when larger:
the model's own float resolution, robust to a few unstable images (a trained W2A2 student
flips on 0.05-0.1% of images in float64, which must not loosen the gate for the others). The
gate uses this figure.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from qdistill.batch import Inputs, batch_size, call_model, logits_of
from qdistill.errors import ConfigError, ExportError

__all__ = [
    "check_min_agreement",
    "compare_logits",
    "decision_tolerance",
    "label_top1",
    "feeds_of",
    "onnx_logits",
    "onnx_parity",
    "require_parity",
    "torch_logits",
]


def _chunks(inputs: Inputs, batch: int) -> Iterator[Inputs]:
    """``inputs`` (images, or a dict batch) in slices of ``batch`` examples."""
    for i in range(0, batch_size(inputs), batch):
        if isinstance(inputs, Mapping):
            yield {k: v[i : i + batch] for k, v in inputs.items()}
        else:
            yield inputs[i : i + batch]


def _rows(logits: Tensor) -> Tensor:
    """Logits as one row per decision (a token classifier's ``[batch, tokens, classes]`` flattened)."""
    return logits.reshape(-1, logits.shape[-1])


def _logits(model: nn.Module, inputs: Inputs, batch: int) -> Tensor:
    return torch.cat([_rows(logits_of(call_model(model, x))) for x in _chunks(inputs, batch)])


@torch.no_grad()
def torch_logits(model: nn.Module, images: Inputs, batch: int = 256) -> np.ndarray:
    """Logits of ``model`` (eval mode) on ``images`` (or a dict batch), batched, as float32."""
    model.eval()
    return _logits(model, images, batch).float().numpy()


def feeds_of(session: Any, inputs: Inputs) -> dict[str, np.ndarray]:
    """ONNX Runtime feeds: images under the session's one input name, a dict batch by name
    (float tensors as float32; inputs the graph does not read are left out)."""
    if not isinstance(inputs, Mapping):
        return {session.get_inputs()[0].name: inputs.float().numpy()}
    names = {i.name for i in session.get_inputs()}
    return {k: (v.float() if v.is_floating_point() else v).numpy() for k, v in inputs.items() if k in names}


def onnx_logits(session: Any, images: Inputs, batch: int = 256) -> np.ndarray:
    out = [session.run(None, feeds_of(session, x))[0] for x in _chunks(images, batch)]
    return np.concatenate([o.reshape(-1, o.shape[-1]) for o in out])


@torch.no_grad()
def decision_tolerance(model: nn.Module, images: Inputs, logits: np.ndarray, batch: int = 256) -> np.ndarray:
    """Per image, twice the largest |logit change| of ``model`` evaluated in float64 instead of
    float32 (``logits`` are its float32 logits), at least twice its 90th percentile over the
    images: a top-2 margin below this is float noise. Token ids stay integers."""
    double = copy.deepcopy(model).double().eval()
    if isinstance(images, Mapping):
        x = {k: v.double() if v.is_floating_point() else v for k, v in images.items()}
    else:
        x = images.double()
    ref64 = _logits(double, x, batch).numpy()
    change = np.abs(ref64 - logits.astype(np.float64)).max(axis=1)
    return 2 * np.maximum(change, np.percentile(change, 90))


def compare_logits(reference: np.ndarray, other: np.ndarray, tolerance: np.ndarray | None = None) -> dict[str, float]:
    """``max_abs_logit_diff``, ``top1_agreement`` (percent, all images) and the margin-aware
    ``top1_agreement_decisive`` over the ``decisive_images`` whose reference top-2 margin exceeds
    ``tolerance`` (per image; None: only exact ties are left out). 100 when no image is decisive."""
    if reference.shape != other.shape:
        raise ExportError(f"logit shapes differ: {reference.shape} vs {other.shape}")
    agree = reference.argmax(1) == other.argmax(1)
    top2 = np.sort(reference, axis=1)[:, -2:]
    margin = (top2[:, 1] - top2[:, 0]).astype(np.float64)
    decisive = margin > (0.0 if tolerance is None else tolerance)
    return {
        "images": len(reference),
        "max_abs_logit_diff": float(np.abs(reference - other).max()),
        "top1_agreement": float(agree.mean() * 100),
        "decisive_images": int(decisive.sum()),
        "top1_agreement_decisive": float(agree[decisive].mean() * 100) if decisive.any() else 100.0,
    }


def label_top1(trained: np.ndarray, exported: np.ndarray, labels: Tensor | None) -> dict[str, float]:
    """Top-1 (%) of the trained and the exported logits against ``labels``: a parity report's accuracy
    lines (none without labels)."""
    if labels is None:
        return {}
    truth = labels.numpy()
    return {
        "top1_trained": float((trained.argmax(1) == truth).mean() * 100),
        "top1_exported": float((exported.argmax(1) == truth).mean() * 100),
    }


def onnx_parity(model: nn.Module, onnx_model: Any, images: Tensor, threads: int = 2) -> dict[str, float]:
    """Run the PyTorch model and the ONNX model (bytes, path or ModelProto) on ``images`` and compare."""
    from qdistill.export.bench import ort_session

    src = onnx_model.SerializeToString() if hasattr(onnx_model, "SerializeToString") else onnx_model
    reference = torch_logits(model, images)
    exported = onnx_logits(ort_session(src, threads), images)
    return compare_logits(reference, exported, decision_tolerance(model, images, reference))


def check_min_agreement(value: float) -> float:
    """``value`` as a float, or ConfigError when it cannot be a percentage (NaN would pass every export)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"min_agreement must be a number of percent in [0, 100], got {value!r}") from None
    if not (math.isfinite(value) and 0.0 <= value <= 100.0):
        raise ConfigError(f"min_agreement must be a number of percent in [0, 100], got {value!r}")
    return value


def require_parity(parity: dict[str, float], min_agreement: float, what: str, hint: str = "") -> None:
    """Raise ExportError (and so write nothing) when the margin-aware top-1 agreement is below
    ``min_agreement`` percent; ``hint`` ends the message (what the user can do)."""
    agreement = parity.get("top1_agreement_decisive", parity["top1_agreement"])
    if agreement < min_agreement:
        raise ExportError(
            f"parity check failed for {what}: top-1 agreement {agreement:.2f}% < {min_agreement}% on the "
            f"{parity.get('decisive_images', parity['images'])} of {parity['images']} images whose decision is "
            f"numerically settled ({parity['top1_agreement']:.2f}% on all; max |logit diff| "
            f"{parity['max_abs_logit_diff']:.4g}); nothing written{hint}"
        )

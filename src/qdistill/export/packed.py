"""Bit-packed weights in a safetensors file, and `load_packed` to rebuild the trained model.

Each quantized weight is stored as its integer levels ``k`` packed at the layer's bit width plus
the step tensor its quantizer computed; the weight is rebuilt as ``(k - zero) * step``, the very
operation of the fake-quant forward, so the rebuilt model's logits equal the trained model's bit
for bit. Everything else (activation quantizers, BatchNorm, full-precision layers) is stored as
float32. The (zlib-compressed) JSON header describes the architecture and every quantizer.
"""

from __future__ import annotations

import base64
import json
import math
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from qdistill.errors import CheckpointError, MissingFileError
from qdistill.export.intgrid import quant_levels
from qdistill.quant.modules import QuantModule

__all__ = ["FrozenWeight", "export_packed", "load_packed", "pack_bits", "unpack_bits"]

FORMAT = "qdistill.packed/1"


def pack_bits(levels: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned integers below ``2**bits`` into bytes, ``bits`` bits each (little-endian bit order)."""
    flat = levels.astype(np.uint8).reshape(-1, 1)
    return np.packbits(np.unpackbits(flat, axis=1, bitorder="little")[:, :bits], bitorder="little")


def unpack_bits(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of `pack_bits` for ``count`` values."""
    b = np.unpackbits(packed, bitorder="little")[: count * bits].reshape(count, bits)
    return (b.astype(np.uint16) << np.arange(bits, dtype=np.uint16)).sum(1).astype(np.uint8)


class FrozenWeight(nn.Module):
    """Stands in for a weight quantizer after loading: returns ``(k - zero) * step`` whatever its input."""

    def __init__(self, levels: Tensor, step: Tensor, zero: float, bits: int) -> None:
        super().__init__()
        self.register_buffer("levels", levels.float())
        self.register_buffer("step", step.float())
        self.zero = float(zero)
        self.bits = int(bits)

    def forward(self, _: Tensor) -> Tensor:
        return (self.levels - self.zero) * self.step

    def extra_repr(self) -> str:
        return f"bits={self.bits}, zero={self.zero}"


def _arch(model: nn.Module, arch: dict[str, Any] | None) -> dict[str, Any] | None:
    if arch is not None:
        return arch
    return getattr(model, "qdistill_arch", None)


@torch.no_grad()
def export_packed(model: nn.Module, path: str | Path, arch: dict[str, Any] | None = None,
                  meta: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """Write ``model``'s quantized weights bit-packed (plus everything else float32) to ``path``.

    ``arch`` = ``{"name", "num_classes", "in_channels"}`` lets `load_packed` rebuild a registry
    model alone; without it, pass a same-structure quantized model to `load_packed`. Returns the
    header.
    """
    from safetensors.numpy import save_file

    model = model.eval()
    tensors: dict[str, np.ndarray] = {}
    layers: dict[str, Any] = {}
    skip: set[str] = set()
    for name, m in model.named_modules():
        if not isinstance(m, QuantModule):
            continue
        wq = m.weight_quant
        if isinstance(wq, FrozenWeight):
            k, step, zero = wq.levels, wq.step, wq.zero
        else:
            k, step, zero = quant_levels(wq, m.weight)
        tensors[f"{name}.weight.levels"] = pack_bits(k.to(torch.uint8).numpy(), wq.bits)
        tensors[f"{name}.weight.step"] = step.float().contiguous().numpy()
        layers[name] = {"bits": wq.bits, "zero": zero, "shape": list(m.weight.shape), "method": type(wq).__name__,
                        "act_bits": m.act_quant.bits if m.act_quant is not None else None}  # fmt: skip
        skip |= {f"{name}.weight"} | {f"{name}.weight_quant.{k}" for k in wq.state_dict()}
    # Float tensors go into one blob and small non-float buffers into the JSON header: one
    # safetensors entry per BatchNorm buffer would cost more header bytes than 2-bit weights.
    floats, index, small = [], {}, {}
    offset = 0
    for key, value in model.state_dict().items():
        if key in skip:
            continue
        if value.dtype == torch.float32:
            index[key] = [offset, list(value.shape)]
            floats.append(value.detach().cpu().reshape(-1))
            offset += value.numel()
        else:
            small[key] = [str(value.dtype).removeprefix("torch."), value.tolist()]
    tensors["state"] = torch.cat(floats).numpy() if floats else np.zeros(0, np.float32)
    cfg = getattr(model, "qdistill_config", None)
    header = {"format": FORMAT, "arch": _arch(model, arch), "quant": cfg.to_dict() if cfg is not None else None,
              "layers": layers, "state": index, "small": small, "meta": meta or {}}  # fmt: skip
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # zlib'd JSON: the per-tensor names repeat and would otherwise outweigh a 2-bit ResNet's weights
    packed_header = base64.b64encode(zlib.compress(json.dumps(header).encode(), 9)).decode()
    save_file(tensors, str(path), metadata={"format": FORMAT, "qdistill": packed_header})
    return header


def _skeleton(header: dict[str, Any]) -> nn.Module:
    from qdistill.models import create_model
    from qdistill.quant import QuantConfig, quantize

    arch = header.get("arch")
    if not arch:
        raise CheckpointError("packed file has no architecture record: pass model= (a quantized model of the same structure)")
    model = create_model(arch["name"], num_classes=arch["num_classes"], in_channels=arch["in_channels"])
    if header.get("quant"):
        quantize(model, QuantConfig.from_dict(header["quant"]))
    return model


@torch.no_grad()
def load_packed(path: str | Path, model: nn.Module | None = None) -> nn.Module:
    """Rebuild the model stored by `export_packed` (eval mode); logits equal the trained model's.

    Args:
        path: the ``.safetensors`` file.
        model: optional quantized model of the same structure to fill in; default: rebuilt from the
            header's architecture and quantization config.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"packed model not found: {path}")
    try:
        with safe_open(str(path), "np") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as e:
        raise CheckpointError(f"{path} is not a safetensors file: {str(e).splitlines()[0][:200]}") from None
    if meta.get("format") != FORMAT or "qdistill" not in meta:
        raise CheckpointError(f"{path} is not a qdistill packed model (no qdistill header)")
    try:
        header = json.loads(zlib.decompress(base64.b64decode(meta["qdistill"])))
    except (zlib.error, ValueError):
        raise CheckpointError(f"{path}: the qdistill header is damaged") from None
    model = _skeleton(header) if model is None else model
    for name, spec in header["layers"].items():
        m = model.get_submodule(name)
        count = math.prod(spec["shape"])
        k = unpack_bits(tensors[f"{name}.weight.levels"], spec["bits"], count).reshape(spec["shape"])
        frozen = FrozenWeight(torch.from_numpy(k), torch.from_numpy(tensors[f"{name}.weight.step"]), spec["zero"], spec["bits"])
        m.weight_quant = frozen
        m.weight.data = frozen(m.weight).clone()
    blob = torch.from_numpy(tensors["state"].copy())
    state = {k: blob[o : o + math.prod(shape)].reshape(shape).clone() for k, (o, shape) in header["state"].items()}
    state |= {k: torch.tensor(v, dtype=getattr(torch, dt)) for k, (dt, v) in header["small"].items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    frozen_keys = {f"{n}.weight_quant.{b}" for n in header["layers"] for b in ("levels", "step")}
    frozen_keys |= {f"{n}.weight" for n in header["layers"]}
    if unexpected or set(missing) - frozen_keys:
        bad = sorted(unexpected or set(missing) - frozen_keys)[:3]
        raise CheckpointError(f"{path} does not fit the model: mismatched keys {bad}")
    return model.eval()

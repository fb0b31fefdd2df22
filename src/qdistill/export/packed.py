"""Bit-packed weights in a safetensors file, and `load_packed` to rebuild the trained model.

The file holds the converted model (`qdistill.quant.convert`): each integer layer's weight levels
packed at its bit width, and every other tensor of its state dict (scales, zero points, input
grids, BatchNorm, full-precision layers) as float32. `load_packed` builds the same integer model
(create -> quantize -> convert) and loads the tensors into it, so its logits equal the trained
fake-quant model's bit for bit. The (zlib-compressed) JSON header describes the architecture, the
quantization config and every layer.
"""

from __future__ import annotations

import base64
import copy
import json
import math
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from qdistill.errors import CheckpointError, MissingFileError
from qdistill.quant.base import Quantizer
from qdistill.quant.convert import convert
from qdistill.quant.intform import IntModule
from qdistill.quant.modules import QuantModule

__all__ = [
    "export_packed",
    "fill_integer_model",
    "load_packed",
    "pack_bits",
    "pack_levels",
    "unpack_bits",
    "unpack_levels",
]

FORMAT = "qdistill.packed/2"


def pack_bits(levels: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned integers below ``2**bits`` into bytes, ``bits`` bits each (little-endian bit order)."""
    flat = levels.astype(np.uint8).reshape(-1, 1)
    return np.packbits(np.unpackbits(flat, axis=1, bitorder="little")[:, :bits], bitorder="little")


def unpack_bits(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of `pack_bits` for ``count`` values."""
    b = np.unpackbits(packed, bitorder="little")[: count * bits].reshape(count, bits)
    return (b.astype(np.uint16) << np.arange(bits, dtype=np.uint16)).sum(1).astype(np.uint8)


def _offset(levels_dtype: str, bits: int) -> int:
    """What packing adds to the levels so that they are unsigned: int8 levels start at -2^(b-1)."""
    return 2 ** (bits - 1) if levels_dtype == "int8" else 0


def _is_fake_quant(model: nn.Module) -> bool:
    return any(isinstance(m, QuantModule) for m in model.modules())


def _arch(model: nn.Module, arch: dict[str, Any] | None) -> dict[str, Any] | None:
    if arch is not None:
        return arch
    return getattr(model, "qdistill_arch", None)


@torch.no_grad()
def export_packed(
    model: nn.Module, path: str | Path, arch: dict[str, Any] | None = None, meta: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Write ``model`` (fake-quant or converted) to ``path``: integer weight levels bit-packed,
    everything else float32.

    ``arch`` = ``{"name", "num_classes", "in_channels"}`` lets `load_packed` rebuild a registry
    model alone; without it, pass a same-structure quantized model to `load_packed`. Returns the
    header.
    """
    from safetensors.numpy import save_file

    model = convert(copy.deepcopy(model)) if _is_fake_quant(model) else model.eval()
    tensors: dict[str, np.ndarray] = {}
    layers: dict[str, Any] = {}
    skip: set[str] = set()
    for name, m in model.named_modules(remove_duplicate=False):
        if not isinstance(m, IntModule):
            continue
        tensors[f"{name}.weight_levels"], layers[name] = pack_levels(m)
        skip.add(f"{name}.weight_levels")
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
    header = {
        "format": FORMAT,
        "arch": _arch(model, arch),
        "quant": cfg.to_dict() if cfg is not None else None,
        "layers": layers,
        "state": index,
        "small": small,
        "meta": meta or {},
    }
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
        raise CheckpointError(
            "packed file has no architecture record: pass model= (a quantized model of the same structure)"
        )
    model = create_model(arch["name"], num_classes=arch["num_classes"], in_channels=arch["in_channels"])
    if header.get("quant"):
        quantize(model, QuantConfig.from_dict(header["quant"]))
    return model


def read_safetensors(path: Path, framework: str = "np") -> tuple[dict[str, str], dict[str, Any]]:
    """The metadata and tensors of a safetensors file, with one-line errors for a missing or foreign file."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise MissingFileError(f"packed model not found: {path}")
    try:
        with safe_open(str(path), framework) as f:
            return f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except SafetensorError as e:
        raise CheckpointError(f"{path} is not a safetensors file: {str(e).splitlines()[0][:200]}") from None


def _read(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The header and the tensors of a packed file (CheckpointError when it is not one)."""
    meta, tensors = read_safetensors(path)
    if meta.get("format", "").startswith("qdistill.packed/") and meta["format"] != FORMAT:
        raise CheckpointError(
            f"{path} was written by another qdistill version ({meta['format']}, this one reads {FORMAT}): export it again"
        )
    if meta.get("format") != FORMAT or "qdistill" not in meta:
        raise CheckpointError(f"{path} is not a qdistill packed model (no qdistill header)")
    try:
        return json.loads(zlib.decompress(base64.b64decode(meta["qdistill"]))), tensors
    except (zlib.error, ValueError):
        raise CheckpointError(f"{path}: the qdistill header is damaged") from None


@torch.no_grad()
def load_packed(path: str | Path, model: nn.Module | None = None) -> nn.Module:
    """Rebuild the model stored by `export_packed` as an integer model (`qdistill.quant.convert`,
    eval mode); its logits equal the trained model's bit for bit.

    Args:
        path: the ``.safetensors`` file.
        model: optional model of the same structure to fill in (quantized, calibrated or not, or
            already converted); default: rebuilt from the header's architecture and quant config.
    """
    path = Path(path)
    header, tensors = _read(path)
    model = _skeleton(header) if model is None else model
    blob = torch.from_numpy(tensors["state"].copy())
    state = {k: blob[o : o + math.prod(shape)].reshape(shape).clone() for k, (o, shape) in header["state"].items()}
    state |= {k: torch.tensor(v, dtype=getattr(torch, dt)) for k, (dt, v) in header["small"].items()}
    for name, spec in header["layers"].items():
        state[f"{name}.weight_levels"] = unpack_levels(tensors[f"{name}.weight_levels"], spec)
    return fill_integer_model(model, state, header["layers"], path)


def pack_levels(layer: IntModule) -> tuple[np.ndarray, dict[str, Any]]:
    """An integer layer's weight levels packed at its bit width, and what `unpack_levels` needs."""
    kind = str(layer.weight_levels.dtype).removeprefix("torch.")
    unsigned = layer.weight_levels.to(torch.int16) + _offset(kind, layer.bits)
    spec = {
        "bits": layer.bits,
        "levels": kind,
        "shape": list(layer.weight_levels.shape),
        "input": layer.input_grid.kind,
        "act_bits": layer.input_grid.bits,
    }
    return pack_bits(unsigned.to(torch.uint8).numpy(), layer.bits), spec


def unpack_levels(packed: np.ndarray, spec: dict[str, Any]) -> torch.Tensor:
    """Inverse of `pack_levels`: the int8 / uint8 levels tensor."""
    unsigned = unpack_bits(packed, spec["bits"], math.prod(spec["shape"])).astype(np.int16)
    levels = torch.from_numpy(unsigned) - _offset(spec["levels"], spec["bits"])
    return levels.to(getattr(torch, spec["levels"])).reshape(spec["shape"])


@torch.no_grad()
def fill_integer_model(
    model: nn.Module, state: dict[str, torch.Tensor], layers: dict[str, Any], path: Path
) -> nn.Module:
    """Convert ``model`` (when still fake-quant) and load ``state`` into it; the file's levels,
    scales and zero points replace each integer layer's (the file decides bits and granularity)."""
    if _is_fake_quant(model):
        for q in model.modules():
            if isinstance(q, Quantizer):
                q.initialized = True  # its grid is a placeholder: the file's values replace it
        convert(model)
    modules = dict(model.named_modules())
    for name, spec in layers.items():
        layer = modules.get(name)
        if isinstance(layer, IntModule):
            layer.bits = spec["bits"]
            for key in ("weight_levels", "weight_scale", "weight_zero_point"):
                setattr(layer, key, state[f"{name}.{key}"])
    try:
        model.load_state_dict(state)  # copies into the model's tensors: tied weights stay tied
    except RuntimeError as e:
        raise CheckpointError(
            f"{path} does not fit the model: {str(e).splitlines()[1 if chr(10) in str(e) else 0].strip()[:300]}"
        ) from None
    return model.eval()

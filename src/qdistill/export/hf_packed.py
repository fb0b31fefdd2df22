"""Packed low-bit safetensors for Hugging Face models: one named tensor per part.

Each integer layer (`qdistill.convert`) is written as ``<layer>.weight_packed`` (its levels, bit
packed), ``<layer>.weight_scale`` and ``<layer>.weight_zero_point`` (float32, one per tensor,
output channel or group); an input grid as ``<layer>.input_grid.{lo,hi,step,zero}``; every other
tensor (embeddings, norms, biases, float layers) under its own state-dict name and dtype. The
bits, group size and shapes sit in the safetensors metadata, so plain ``safetensors.safe_open``
reads everything. `load_hf_packed` rebuilds the integer model from a float model of the same
class (e.g. ``from_pretrained`` on the teacher's folder): quantize -> convert -> load, logits equal
to the trained student's bit for bit.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qdistill.errors import CheckpointError, ConfigError
from qdistill.export.packed import fill_integer_model, pack_levels, read_safetensors, unpack_levels
from qdistill.quant.convert import convert
from qdistill.quant.intform import IntModule

__all__ = ["HF_FORMAT", "export_hf_packed", "load_hf_packed"]

HF_FORMAT = "qdistill.hf_packed/1"


@torch.no_grad()
def export_hf_packed(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """Write the quantized (fake-quant) ``model`` to ``path``; returns the per-layer metadata."""
    from safetensors.torch import save_file

    cfg = getattr(model, "qdistill_config", None)
    if cfg is None:
        raise ConfigError("export_hf_packed: the model was not quantized with qdistill.quantize (no qdistill_config)")
    ints = convert(copy.deepcopy(model))
    tensors: dict[str, torch.Tensor] = {}
    layers: dict[str, Any] = {}
    for name, m in ints.named_modules():
        if isinstance(m, IntModule):
            packed, spec = pack_levels(m)
            tensors[f"{name}.weight_packed"] = torch.from_numpy(packed)
            layers[name] = spec | {"group_size": cfg.for_layer(name).group_size}
    tied: dict[str, str] = {}
    seen: dict[int, str] = {}
    for key, value in ints.state_dict(keep_vars=True).items():
        if key.endswith(".weight_levels"):
            continue
        if id(value) in seen:  # a tied weight (lm_head = embeddings) is written once
            tied[key] = seen[id(value)]
            continue
        seen[id(value)] = key
        tensors[key] = value.detach().contiguous()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": HF_FORMAT,
        "quant": json.dumps(cfg.to_dict()),
        "layers": json.dumps(layers),
        "tied": json.dumps(tied),
    }
    save_file(tensors, str(path), metadata=meta)
    return layers


@torch.no_grad()
def load_hf_packed(path: str | Path, model: nn.Module) -> nn.Module:
    """Fill ``model`` (a float model of the student's class and config) from ``path``: it is
    quantized with the stored config, converted and loaded, and returned in eval mode."""
    from qdistill.quant import QuantConfig, quantize

    path = Path(path)
    meta, tensors = read_safetensors(path, "pt")
    if meta.get("format") != HF_FORMAT:
        raise CheckpointError(f"{path} is not a qdistill Hugging Face packed model (format {meta.get('format')!r})")
    layers = json.loads(meta["layers"])
    quantize(model, QuantConfig.from_dict(json.loads(meta["quant"])))
    state = {k: v for k, v in tensors.items() if not k.endswith(".weight_packed")}
    for name, spec in layers.items():
        state[f"{name}.weight_levels"] = unpack_levels(tensors[f"{name}.weight_packed"].numpy(), spec)
    state |= {alias: state[source] for alias, source in json.loads(meta["tied"]).items()}
    return fill_integer_model(model, state, layers, path)

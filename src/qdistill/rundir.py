"""A run folder's files: is it writable, the finished model, and which config made what is there.

A finished run holds ``model.safetensors`` (the best student's tensors, nothing executable) and
``model.json`` (what rebuilds it: model name and arguments, quant config, the whole run config).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qdistill.errors import CheckpointError, ConfigError, MissingFileError
from qdistill.train.checkpoint import load_checkpoint

__all__ = [
    "MODEL_FORMAT",
    "RUN_FILES",
    "config_diff",
    "ensure_writable",
    "read_model_info",
    "save_model",
    "stored_config",
]

MODEL_FORMAT = "qdistill-model"
# what a run writes into its folder (model.pt: runs before model.safetensors); a fresh start removes them
RUN_FILES = (
    "results.json",
    "model.safetensors",
    "model.json",
    "model.pt",
    "best.pt",
    "last.pt",
    "metrics.json",
    "metrics.csv",
)


def ensure_writable(folder: str | Path, what: str = "out") -> Path:
    """Create ``folder`` and prove a file can be written there, before any expensive work."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise ConfigError(f"{what}: cannot write to {folder} ({e.strerror or type(e).__name__})") from None
    return folder


def _write_atomic(path: Path, write: Callable[[str], None]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_model(out: Path, model: nn.Module, info: dict[str, Any]) -> None:
    """Write ``model.safetensors`` (state dict) and ``model.json`` (``info``), each atomically."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    _write_atomic(out / "model.safetensors", lambda tmp: save_file(tensors, tmp))
    text = json.dumps({"format": MODEL_FORMAT, **info}, indent=1)
    _write_atomic(out / "model.json", lambda tmp: Path(tmp).write_text(text))


def read_model_info(run_dir: Path) -> dict[str, Any]:
    """The parsed ``model.json`` of a finished run (one-line errors when missing or corrupt)."""
    path = run_dir / "model.json"
    if not path.is_file():
        raise MissingFileError(f"{path} not found; is the run finished?")
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is corrupt ({type(e).__name__}: {e})") from None
    if not isinstance(info, dict) or info.get("format") != MODEL_FORMAT:
        raise CheckpointError(f"{path} is not a qdistill model description")
    for key in ("model", "config"):
        if not isinstance(info.get(key), dict):
            raise CheckpointError(f"{path} lacks its {key!r} section")
    return info


def stored_config(run_dir: Path) -> dict[str, Any] | None:
    """The config recorded in the run folder (``model.json``, else ``last.pt``); None if none is."""
    if (run_dir / "model.json").is_file():
        return read_model_info(run_dir)["config"]
    if (run_dir / "last.pt").is_file():
        config = load_checkpoint(run_dir / "last.pt", map_location=torch.device("cpu")).get("meta", {}).get("config")
        if isinstance(config, dict):
            return config
    return None


def config_diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ, as ``key (old -> new)``, nested mappings compared key by key."""
    diffs = []
    for key in sorted(set(old) | set(new), key=str):
        name = f"{prefix}{key}"
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += config_diff(a, b, name + ".")
        elif a != b:
            diffs.append(f"{name} ({a!r} -> {b!r})")
    return diffs

"""Atomic, safe checkpoints: a crash mid-write never leaves a truncated file behind, and loading
never runs code (tensors and plain Python types only, read with ``weights_only=True``)."""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

from qdistill.errors import CheckpointError, DivergedError, MissingFileError

__all__ = ["CheckpointError", "load_checkpoint", "remove_stale_tmp", "require_keys", "save_checkpoint"]

FORMAT = "qdistill-checkpoint"
TMP_GLOB = "*.pt.*.tmp"  # what `save_checkpoint` leaves behind when killed mid-write
PLAIN = (str, int, float, bool, type(None))  # with tensors and dict/list/tuple: all that ``weights_only`` reads


def _check(obj: Any, path: Path, where: str = "state") -> None:
    """Refuse what could not be read back safely: non-plain objects (a bug) and non-finite tensors."""
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() and not bool(torch.isfinite(obj).all()):
            raise DivergedError(f"not writing {path}: {where} holds NaN or infinite values (the run diverged)")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _check(v, path, f"{where}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check(v, path, f"{where}[{i}]")
    elif not isinstance(obj, PLAIN):
        raise TypeError(
            f"not writing {path}: {where} is a {type(obj).__name__}; checkpoints hold tensors and plain types"
        )


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` via a temporary file in the same folder and an atomic rename.

    Refuses (`DivergedError`) a state holding a NaN or infinite tensor: a checkpoint is only ever
    written for a run worth resuming. Anything but tensors and plain types is a `TypeError`, since
    `load_checkpoint` could not read it back.
    """
    path = Path(path)
    _check(state, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def remove_stale_tmp(folder: str | Path) -> list[Path]:
    """Delete the temporary files of writes that a kill interrupted; return what was removed."""
    stale = sorted(Path(folder).glob(TMP_GLOB))
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by `save_checkpoint`, with one-line errors for bad files.

    Only tensors and plain types are read (``weights_only=True``): a file carrying any other pickled
    object is refused before that object is built, so opening a run folder never executes code.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower():
            raise CheckpointError(
                f"{path} holds pickled objects other than tensors and plain types; refused (unsafe to load)"
            ) from None
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable (UnpicklingError: {e})") from None
    except Exception as e:  # noqa: BLE001 -- zip and torch errors all mean the same thing to a user
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a qdistill checkpoint")
    return state


def require_keys(state: dict[str, Any], keys: tuple[str, ...], path: str | Path) -> None:
    """One-line `CheckpointError` naming the entries a checkpoint lacks (instead of a KeyError later)."""
    missing = [k for k in keys if k not in state]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}: not a complete qdistill training checkpoint")

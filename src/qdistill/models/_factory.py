"""Build registered models and load state-dict files into them.

Loading checks keys and shapes itself so a bad file fails with one line saying what is wrong
(which file, which keys, how many classes) instead of PyTorch's multi-line dump.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import _IncompatibleKeys

from qdistill.errors import CheckpointError, ConfigError, MissingFileError

from ._registry import MODELS

__all__ = ["create_model", "load_state_dict_file"]

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP and torch.compile
_SHOW = 3  # keys named per category in an error message
_RUN_WEIGHTS = ("model.safetensors", "model.pt")  # a finished run's weights, newest format first


def create_model(
    name: str,
    num_classes: int = 10,
    in_channels: int = 3,
    pretrained: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model, optionally loading weights from a local file.

    Args:
        name: A name from :func:`list_models`.
        num_classes: Size of the classifier output.
        in_channels: Channels of the input images.
        pretrained: Path of a state-dict file or of a run folder (see :func:`load_state_dict_file`);
            weights are never downloaded.
        **kwargs: Passed to the model's entry point.

    Raises:
        ConfigError: Unknown ``name`` (the message lists the known ones) or bad sizes.
        MissingFileError / CheckpointError: see :func:`load_state_dict_file`.
    """
    factory = MODELS.get(name)
    for arg, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{arg} must be a positive int, got {value!r}")
    if isinstance(pretrained, bool):
        raise ConfigError("pretrained must be a checkpoint path or None; qdistill never downloads weights")
    model = factory(num_classes=num_classes, in_channels=in_channels, **kwargs)
    if pretrained is not None:
        load_state_dict_file(model, pretrained)
    return model


def load_state_dict_file(model: nn.Module, path: str | os.PathLike[str]) -> _IncompatibleKeys:
    """Strictly load a checkpoint file into ``model``.

    Accepts a bare state dict or a dict holding one under ``"state_dict"`` or ``"model"``,
    saved by ``torch.save`` (read with ``weights_only=True``) or as ``.safetensors``; a run
    folder stands for its ``model.safetensors`` (or the ``model.pt`` of older runs).
    ``module.`` and ``_orig_mod.`` prefixes are stripped. BatchNorm ``num_batches_tracked``
    buffers absent from old checkpoints keep the model's values.

    Returns:
        PyTorch's ``(missing_keys, unexpected_keys)`` result; both are empty on success.

    Raises:
        MissingFileError: ``path`` does not exist.
        CheckpointError: The file is unreadable, holds no state dict, or its keys, shapes or
            class count do not match ``model``.
    """
    path = _resolve_run_folder(Path(path))
    if not path.is_file():
        raise MissingFileError(f"checkpoint file not found: {path}")
    state = _strip_prefixes(_extract_state_dict(_read(path), path))
    own = model.state_dict()
    for key, value in own.items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = value
    _check_compatible(model, own, state, path)
    return model.load_state_dict(state, strict=True)


def _resolve_run_folder(path: Path) -> Path:
    """A run folder means its trained model; any other path is returned unchanged."""
    if not path.is_dir():
        return path
    for name in _RUN_WEIGHTS:
        if (path / name).is_file():
            return path / name
    raise MissingFileError(f"{path} is a folder without {' or '.join(_RUN_WEIGHTS)}; is the run finished?")


def _read(path: Path) -> Any:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several unrelated types for corrupt files
        raise CheckpointError(f"cannot read checkpoint {path}: {type(err).__name__}: {_short_reason(err)}") from err


def _short_reason(err: Exception, limit: int = 200) -> str:
    """One line from torch's multi-paragraph load errors, keeping the part that names the cause."""
    text = str(err)
    marker = "WeightsUnpickler error:"
    if marker in text:  # weights_only=True refused the pickle: corrupt, or objects besides tensors
        cause = text.split(marker, 1)[1].split("Check the documentation", 1)[0].split(". Please use", 1)[0]
        cause = " ".join(cause.split())
        text = f"corrupt, or not a tensors-only file ({cause}); re-save it with torch.save(model.state_dict())"
    text = " ".join(text.split()) or "empty or truncated file"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _extract_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        what = f"keys {sorted(map(str, obj))[:5]}" if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"{path} holds no state dict (found {what}); expected tensors, maybe under 'state_dict'")
    return dict(obj)


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in _WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix) :], True
        out[key] = value
    return out


def _check_compatible(
    model: nn.Module, own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], path: Path
) -> None:
    head = getattr(model, "classifier", None)
    head_key = f"{head}.weight" if isinstance(head, str) else None
    if head_key in own and head_key in state and state[head_key].shape[0] != own[head_key].shape[0]:
        raise CheckpointError(
            f"{path}: checkpoint has {state[head_key].shape[0]} classes and the model "
            f"{own[head_key].shape[0]}; create the model with num_classes={state[head_key].shape[0]}"
        )
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    problems = [
        f"{label} ({len(items)}): {', '.join(items[:_SHOW])}{', ...' if len(items) > _SHOW else ''}"
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", shapes))
        if items
    ]
    if problems:
        raise CheckpointError(f"{path} does not fit {type(model).__name__}: {'; '.join(problems)}")

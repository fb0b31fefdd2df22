"""Hugging Face models as teachers and students: load a local folder or GGUF file, rebuild from a run.

Nothing is downloaded: every call passes ``local_files_only=True``, so a missing file is one
`MissingFileError` line instead of a network attempt. transformers is imported inside the functions,
so ``import qdistill`` never imports it (install it with ``pip install "qdistill[hf]"``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qdistill.errors import CheckpointError, ConfigError, MissingFileError, QdistillError

__all__ = ["HF_TASKS", "build_hf_model", "load_hf_model", "load_hf_tokenizer", "save_hf_config"]

HF_TASKS = ("causal_lm", "sequence_classification")
_AUTO_CLASSES = {"causal_lm": "AutoModelForCausalLM", "sequence_classification": "AutoModelForSequenceClassification"}


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ConfigError('model.source: hf needs transformers: pip install "qdistill[hf]"') from None
    return transformers


def _location(pretrained: str) -> tuple[Path, dict[str, Any]]:
    """(folder, extra from_pretrained arguments) of a model folder or a ``.gguf`` file."""
    path = Path(pretrained).expanduser()
    if not path.exists():
        raise MissingFileError(f"model.pretrained: {path} does not exist (a local model folder or .gguf file)")
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ConfigError(f"model.pretrained: {path} is a file but not .gguf; give the model's folder instead")
        return path.parent, {"gguf_file": path.name}
    if not (path / "config.json").is_file():
        raise MissingFileError(f"model.pretrained: {path} has no config.json (not a Hugging Face model folder)")
    return path, {}


def infer_task(config: Any, task: str | None, gguf: bool = False) -> str:
    """``task`` if given, else read from the config's ``architectures`` (``...ForCausalLM`` etc.);
    a GGUF file is a causal LM (the format stores decoder LMs, without ``architectures``)."""
    if task is not None:
        if task not in HF_TASKS:
            raise ConfigError(f"model.task: unknown {task!r}; choose one of {', '.join(HF_TASKS)}")
        return task
    for arch in getattr(config, "architectures", None) or ():
        if arch.endswith(("ForCausalLM", "LMHeadModel")):
            return "causal_lm"
        if arch.endswith("ForSequenceClassification"):
            return "sequence_classification"
    if gguf:
        return "causal_lm"
    raise ConfigError(
        f"model.task: cannot infer it from architectures {getattr(config, 'architectures', None)}; "
        f"set model.task to one of {', '.join(HF_TASKS)}"
    )


def load_hf_model(pretrained: str, task: str | None = None, num_labels: int | None = None) -> tuple[nn.Module, str]:
    """The fp32 model at ``pretrained`` (folder or GGUF file) and its task, in eval mode.

    ``num_labels`` (sequence classification) replaces the config's label count; a head of another
    size is then freshly initialised (a teacher that is fine-tuned first).
    """
    transformers = _transformers()
    folder, extra = _location(pretrained)
    try:
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True, **extra)
        task = infer_task(config, task, "gguf_file" in extra)
        kwargs: dict[str, Any] = {"local_files_only": True, "dtype": torch.float32, **extra}
        if num_labels is not None and task == "sequence_classification":
            kwargs.update(num_labels=num_labels, ignore_mismatched_sizes=True)
        model = getattr(transformers, _AUTO_CLASSES[task]).from_pretrained(folder, **kwargs)
    except QdistillError:
        raise
    except OSError as e:  # missing weights, unreadable files
        raise MissingFileError(
            f"model.pretrained: cannot load {pretrained} ({' '.join(str(e).split())[:200]})"
        ) from None
    except (ValueError, KeyError) as e:  # an architecture transformers does not know, a corrupt GGUF
        raise CheckpointError(
            f"model.pretrained: cannot load {pretrained} ({' '.join(str(e).split())[:200]})"
        ) from None
    return model.to(torch.float32).eval(), task  # GGUF models refuse .float(); they are dequantized already


def load_hf_tokenizer(pretrained: str) -> Any:
    """The tokenizer stored with the model (a folder's tokenizer files or the GGUF's vocabulary)."""
    transformers = _transformers()
    folder, extra = _location(pretrained)
    try:
        return transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True, **extra)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise MissingFileError(
            f"model.pretrained: no usable tokenizer at {pretrained} ({' '.join(str(e).split())[:160]})"
        ) from None


def save_hf_config(model: nn.Module, folder: Path) -> None:
    """Write the model's ``config.json`` into ``folder`` (what `build_hf_model` rebuilds it from).

    The class name is recorded as ``architectures`` (GGUF configs have none) and a GGUF
    ``quantization_config`` is dropped: the rebuilt model holds plain fp32 tensors."""
    config = copy.deepcopy(model.config)
    config.architectures = [type(model).__name__]
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(folder)


def build_hf_model(folder: Path, task: str) -> nn.Module:
    """An untrained model of the architecture in ``folder/config.json`` (weights are loaded after)."""
    transformers = _transformers()
    if not (folder / "config.json").is_file():
        raise MissingFileError(
            f"{folder / 'config.json'} not found: the run's Hugging Face architecture is not recorded"
        )
    config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    return getattr(transformers, _AUTO_CLASSES[infer_task(config, task)]).from_config(config).float()

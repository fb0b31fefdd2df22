"""A whole run from one config: data -> teacher -> quantized student -> training -> test metrics.

This is what ``qdistill train CONFIG.yaml`` executes; Python users can call `run_experiment`
with a `RunConfig`, or use the pieces (`create_model`, `make_student`, `build_objective`,
`Trainer`) directly in their own loop.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from qdistill.batch import call_model, logits_of
from qdistill.config import apply_overrides, from_dict, yaml_load
from qdistill.data import BatchLoader, DataSplits, ImageSet, load_dataset, split_holdout
from qdistill.data.formats import DATASET_FORMATS
from qdistill.distill.ensemble import TeacherEnsemble
from qdistill.distill.objectives import OBJECTIVES, build_objective, objective_params
from qdistill.distill.student import make_student
from qdistill.errors import CheckpointError, ConfigError, DataError, MissingFileError, QdistillError
from qdistill.models import MODELS, create_model, load_state_dict_file
from qdistill.models.hf import HF_TASKS
from qdistill.quant.api import quantize
from qdistill.quant.config import QuantConfig
from qdistill.rundir import RUN_FILES, config_diff, ensure_writable, read_model_info, save_model, stored_config
from qdistill.train.checkpoint import load_checkpoint
from qdistill.train.config import TrainConfig
from qdistill.train.distributed import barrier, is_main, process_group, rank_and_world
from qdistill.train.evaluate import evaluate
from qdistill.train.trainer import Trainer, pick_device, seed_everything

__all__ = [
    "DataConfig",
    "EvalConfig",
    "MethodConfig",
    "ModelConfig",
    "RunConfig",
    "build_loaders",
    "check_out",
    "load_config",
    "load_run",
    "loader_device",
    "model_size_bytes",
    "prepare_data",
    "run_experiment",
]


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how they are batched.

    ``val_fraction`` of the training images is held out (stratified when labelled) to choose the
    best epoch; the test split is only used for the final report. ``subset`` / ``test_subset``
    cap the number of images (quick runs).
    """

    format: str = "digits"
    root: str | None = None
    val_fraction: float = 0.1
    subset: int | None = None
    test_subset: int | None = None
    batch_size: int = 128
    eval_batch_size: int = 512
    augment: str | None = None
    seed: int = 0
    mean: list[float] | None = None
    std: list[float] | None = None
    cache_dir: str | bool | None = None  # False (YAML `off`) disables the cache
    on_device: str | bool = "auto"  # images held and batched on the training device (auto: on CUDA)
    block_size: int = 256  # text: tokens per block
    test_lines: list[int] | None = None  # text: held-out lines [first, last], 1-based inclusive
    test_fraction: float = 0.0  # text without test_lines: hold out this final share of the lines
    text_field: str = "text"  # text: the field of .jsonl records
    num_sequences: int = 256  # generated: sequences sampled from the teacher (block_size tokens each)
    gen_prompts: list[str] | None = None  # generated: start texts (None: the tokenizer's BOS)
    gen_random_first: bool = True  # generated: a uniform random first token after the prompt (LLM-QAT)
    gen_greedy_tokens: int = 3  # generated: the next tokens taken top-1
    gen_temperature: float = 1.0  # generated: sampling temperature of the rest
    gen_top_k: int | None = None  # generated: sample among the k most likely tokens (None: all)
    gen_batch_size: int = 8  # generated: sequences per forward pass and per chunk file
    gen_test_sequences: int = 16  # generated: the last sequences, held out for agreement / KL

    def __post_init__(self) -> None:
        if self.format not in TEXT_FORMATS:
            DATASET_FORMATS.get(self.format)
        _check_text_keys(self)
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ConfigError("data.batch_size and data.eval_batch_size must be >= 1")
        if self.on_device not in ("auto", True, False):
            raise ConfigError(f"data.on_device must be auto, true or false, got {self.on_device!r}")


TEXT_FORMATS = ("text", "generated")


def _check_text_keys(cfg: DataConfig) -> None:
    if cfg.block_size < 2:
        raise ConfigError(f"data.block_size must be >= 2, got {cfg.block_size}")
    if cfg.test_lines is not None and len(cfg.test_lines) != 2:
        raise ConfigError(f"data.test_lines must be [first, last], got {cfg.test_lines}")
    if not 0.0 <= cfg.test_fraction < 1.0:
        raise ConfigError(f"data.test_fraction must be in [0, 1), got {cfg.test_fraction}")
    if cfg.format == "generated" and not 0 <= cfg.gen_test_sequences < cfg.num_sequences:
        raise ConfigError(
            f"data.gen_test_sequences must be in [0, num_sequences = {cfg.num_sequences}), got {cfg.gen_test_sequences}"
        )
    if cfg.format == "generated" and cfg.root is not None and cfg.test_lines is None and not cfg.test_fraction:
        raise ConfigError(
            "data.root with data.format: generated is evaluation text only: "
            "set data.test_lines or data.test_fraction to say which lines"
        )


@dataclass(frozen=True)
class ModelConfig:
    """The teacher architecture and its weights; the student is a quantized copy of it.

    ``pretrained`` is a state-dict file or a finished run's folder. A method that distils from
    a teacher refuses a teacher without weights unless ``random_teacher`` says it is meant.
    ``source: hf`` reads a Hugging Face model instead (``pretrained``: a local model folder or a
    ``.gguf`` file; ``name`` is unused; ``task`` inferred from its config when None).
    """

    name: str = "smallcnn"
    pretrained: str | None = None
    num_classes: int | None = None
    in_channels: int | None = None
    random_teacher: bool = False
    source: str = "registry"
    task: str | None = None

    def __post_init__(self) -> None:
        if self.source == "registry":
            MODELS.get(self.name)
        elif self.source == "hf":
            if self.pretrained is None:
                raise ConfigError("model.source: hf needs model.pretrained (a local model folder or a .gguf file)")
            if self.task is not None and self.task not in HF_TASKS:
                raise ConfigError(f"model.task: unknown {self.task!r}; choose one of {', '.join(HF_TASKS)}")
        else:
            raise ConfigError(f"model.source: unknown {self.source!r}; choose registry or hf")


@dataclass(frozen=True)
class EvalConfig:
    """Held-out language-model evaluation: sliding-window perplexity (see `qdistill.train.lm_eval`).

    ``stride`` None means ``context // 2``; ``rtn`` also evaluates the calibrated, untrained
    student (round-to-nearest with the same quantizer and bits) as the run's baseline.
    """

    context: int = 512
    stride: int | None = None
    rtn: bool = True

    def __post_init__(self) -> None:
        if self.context < 2 or not 1 <= (self.stride or self.context // 2) < self.context:
            raise ConfigError(f"eval: need context >= 2 and 1 <= stride < context, got {self.context}, {self.stride}")


@dataclass(frozen=True)
class MethodConfig:
    """The training objective by name (see ``qdistill.distill.OBJECTIVES``) and its parameters."""

    name: str = "sqakd"
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        allowed = objective_params(OBJECTIVES.get(self.name))
        for key in self.params:
            if key not in allowed:
                raise ConfigError(
                    f"method {self.name!r}: unknown parameter {key!r}; allowed: {', '.join(allowed) or 'none'}"
                )


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs. ``quant: None`` trains a full-precision model (e.g. a teacher).

    ``teachers`` (optional) replaces the single teacher by a frozen ensemble of these models, of
    any architectures (e.g. ResNet-32 and ResNet-56 for a ResNet-20 ``model``); the student is
    still a quantized copy of ``model``. Used by ``ekd`` (and by any method that takes a teacher).

    ``snap_biases`` finishes a quantized run for integer deployment: the trained student's folded
    biases move onto ONNX Runtime's int32 grid (`qdistill.export.snap_biases`, needs the export
    extra) before it is saved and tested, so ``qdistill export`` writes exactly the model that
    ``results.json`` describes.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    quant: QuantConfig | None = field(default_factory=QuantConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    out: str = "runs/default"
    calib_images: int = 256
    teachers: tuple[ModelConfig, ...] = ()
    snap_biases: bool = False
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "teachers", tuple(self.teachers))
        if self.calib_images < 1:
            raise ConfigError(f"calib_images must be >= 1, got {self.calib_images}")
        if self.snap_biases and importlib.util.find_spec("onnx") is None:
            raise ConfigError("snap_biases: needs the export extra (pip install 'qdistill[export]')")
        if (self.train.blockwise_steps or self.train.gptq) and self.model.source != "hf":
            raise ConfigError("train.blockwise_steps / train.gptq: the block-wise phase is for model.source: hf runs")
        if not OBJECTIVES.get(self.method.name).needs_teacher:
            return
        for where, m in self.teacher_sections():
            if m.pretrained is None and not m.random_teacher:
                raise ConfigError(
                    f"method {self.method.name!r} distils from a teacher but {where}.pretrained is not set: give the "
                    f"teacher's weights (a state-dict file or a run folder), or set {where}.random_teacher: true "
                    "to distil from random weights on purpose"
                )

    def teacher_sections(self) -> list[tuple[str, ModelConfig]]:
        """(config key, section) of each model the method distils from."""
        if self.teachers:
            return [(f"teachers[{i}]", m) for i, m in enumerate(self.teachers)]
        return [("model", self.model)]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """Build and validate a whole config (keys, value types, names, method parameters)."""
        return from_dict(cls, d, "")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["quant"] = None if self.quant is None else self.quant.to_dict()
        return d


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config, apply ``key=value`` overrides and validate it all before anything runs."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"config file not found: {path}")
    try:
        tree = yaml_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return RunConfig.from_dict(apply_overrides(tree, overrides or []))


def _take(data: ImageSet, n: int | None, seed: int) -> ImageSet:
    if n is None or n >= len(data):
        return data
    return data.subset(np.sort(np.random.default_rng(seed).permutation(len(data))[:n]))


def prepare_data(cfg: DataConfig) -> tuple[DataSplits, ImageSet, ImageSet | None, ImageSet | None]:
    """Load the dataset; return (splits, train, val, test) after subsetting and the hold-out split."""
    kw = {k: getattr(cfg, k) for k in ("mean", "std") if getattr(cfg, k) is not None}
    splits = load_dataset(cfg.format, cfg.root, cfg.cache_dir, **kw)
    train = _take(splits.train, cfg.subset, cfg.seed)
    val = None
    if cfg.val_fraction > 0:
        train, val = split_holdout(train, cfg.val_fraction, cfg.seed)
    test = _take(splits.test, cfg.test_subset, cfg.seed) if splits.test is not None else None
    return splits, train, val, test


def build_loaders(
    cfg: DataConfig,
    splits: DataSplits,
    train: ImageSet,
    val: ImageSet | None,
    labels: bool,
    seed: int,
    num_shards: int = 1,
    shard: int = 0,
    device: torch.device | None = None,
    channels_last: bool = False,
):
    """Training loader (labels only if the method reads them; this rank's shard of each global
    batch of ``data.batch_size``) and validation loader, both building their batches on ``device``
    (None: on the host; see `loader_device`); the training batches NHWC with ``channels_last``."""
    norm = {"mean": splits.mean, "std": splits.std, "device": device}
    augment = cfg.augment or splits.augment
    train_data = train if labels else train.without_labels()
    train_loader = BatchLoader(
        train_data,
        cfg.batch_size,
        **norm,
        augment=augment,
        shuffle=True,
        drop_last=len(train) > cfg.batch_size,
        seed=seed,
        with_labels=labels,
        num_shards=num_shards,
        shard=shard,
        channels_last=channels_last,
    )
    val_loader = None
    if val is not None:
        val_data = val if labels else val.without_labels()
        val_loader = BatchLoader(val_data, cfg.eval_batch_size, **norm, with_labels=labels)
    return train_loader, val_loader


def loader_device(on_device: str | bool, train_device: torch.device) -> torch.device | None:
    """Where `build_loaders` keeps the images (``data.on_device``): the training device, or None
    (the host). ``auto`` is on for CUDA, where it saves a host-to-device copy of every batch."""
    on = train_device.type == "cuda" if on_device == "auto" else on_device
    return train_device if on else None


def _teacher(splits: DataSplits, m: ModelConfig, where: str = "model") -> nn.Module:
    num_classes = m.num_classes or splits.num_classes
    if num_classes is None:
        raise ConfigError(f"{where}.num_classes is required when the data has no labels")
    in_channels = m.in_channels or splits.train.images.shape[-1]
    model = create_model(m.name, num_classes=num_classes, in_channels=in_channels, pretrained=m.pretrained)
    _check_labels(splits, num_classes, where)
    return model


def _check_labels(splits: DataSplits, num_classes: int, where: str) -> None:
    """Labels must index the classifier's outputs (else an IndexError deep inside a loss)."""
    top = max(
        (
            int(s.labels.max())
            for s in (splits.train, splits.test)
            if s is not None and s.labels is not None and len(s.labels)
        ),
        default=-1,
    )
    if top >= num_classes:
        raise ConfigError(
            f"{where}.num_classes is {num_classes} but the data has labels up to {top}: "
            f"set {where}.num_classes: {top + 1} or leave it out to take it from the data"
        )


def _check_teacher_outputs(teacher: nn.Module, calib: torch.Tensor, where: str) -> None:
    """Refuse a teacher whose outputs are non-finite or the same for every image (e.g. inf in BatchNorm)."""
    was_training = teacher.training
    teacher.eval()
    with torch.no_grad():
        logits = logits_of(call_model(teacher, calib)).float()
    teacher.train(was_training)
    if not torch.isfinite(logits).all():
        raise CheckpointError(
            f"{where}: the teacher's outputs on the calibration images are not finite "
            "(inf or nan in its weights or BatchNorm buffers?)"
        )
    spread = (logits.amax(0) - logits.amin(0)).max()
    if len(logits) > 1 and spread <= 1e-6 * (1.0 + logits.abs().max()):
        raise CheckpointError(
            f"{where}: the teacher gives the same outputs for every calibration image "
            "(broken weights or BatchNorm buffers?)"
        )


def _calibration_batch(cfg: RunConfig, splits: DataSplits, train: ImageSet) -> torch.Tensor:
    images = _take(train.without_labels(), cfg.calib_images, cfg.data.seed)
    loader = BatchLoader(images, cfg.calib_images, mean=splits.mean, std=splits.std, with_labels=False)
    return next(iter(loader))


def model_size_bytes(model: nn.Module) -> int:
    """Storage of the deployed weights: quantized layers at their bit width, the rest at 32 bit.

    Quantizer parameters (a few scalars per layer) are not counted.
    """
    from qdistill.quant.base import Quantizer
    from qdistill.quant.modules import QuantModule

    skip = {id(p) for m in model.modules() if isinstance(m, Quantizer) for p in m.parameters()}
    bits = 0
    for module in model.modules():
        if isinstance(module, QuantModule):
            bits += module.weight.numel() * module.weight_quant.bits
            skip.add(id(module.weight))
    bits += sum(p.numel() * 32 for p in model.parameters() if id(p) not in skip)
    return bits // 8


_IGNORED_KEYS = ("out", "train.progress", "train.tensorboard")  # a run is the same run without these
_RESUME_SECTIONS = ("model", "data", "quant", "method", "teachers", "calib_images")


def _differences(old: dict[str, Any], new: dict[str, Any], sections: tuple[str, ...] | None = None) -> list[str]:
    keys = sections or tuple(new)
    diffs = config_diff({k: old.get(k) for k in keys}, {k: new.get(k) for k in keys})
    return [d for d in diffs if not d.startswith(tuple(k + " " for k in _IGNORED_KEYS))]


def check_out(cfg: RunConfig, resume: bool = False, overwrite: bool = False) -> list[str]:
    """Refuse a resume under another config, and a fresh start over another config's run.

    A resume must keep the model, data, quant and method sections (``train.epochs`` may grow). A
    fresh start may replace a run of the same config, one of another config only with
    ``overwrite``. Returns the files of the replaced run, which a fresh start must delete.
    """
    out, new = Path(cfg.out), cfg.to_dict()
    if resume and (out / "last.pt").is_file():
        old = load_checkpoint(out / "last.pt").get("meta", {}).get("config")
        if not isinstance(old, dict):
            raise CheckpointError(f"{out / 'last.pt'} records no run config: cannot check the resume")
        diffs = _differences(_stored_run_config(old, out / "last.pt").to_dict(), new, _RESUME_SECTIONS)
        if diffs:
            raise ConfigError(
                f"cannot resume {out}: the config differs from its checkpoint in "
                f"{', '.join(diffs)}; resume with the same model, data, quant and method (train.epochs may grow)"
            )
        return []
    present = [name for name in RUN_FILES if (out / name).exists()]
    if not present or overwrite:
        return present
    try:
        old = stored_config(out)
        diffs = (
            ["its config is not recorded"] if old is None else _differences(_stored_run_config(old, out).to_dict(), new)
        )
    except QdistillError as e:
        diffs = [str(e)]
    if diffs:
        raise ConfigError(
            f"{out} holds another run ({', '.join(present)}; {', '.join(diffs[:4])}): "
            "pass --overwrite to replace it, --resume to continue it, or choose another out"
        )
    return present


def run_experiment(
    cfg: RunConfig, resume: bool = False, overwrite: bool = False, log: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Train the configured student and return (and write to ``OUT/results.json``) its test metrics.

    ``OUT`` must be writable, and a run of another config there is replaced only with
    ``overwrite``. Everything random (teacher without weights, student, objective modules) is
    built after seeding with ``train.seed``, so the same config gives the same numbers. ``log``
    receives human-readable notes (the quantization summary).

    Under ``torchrun`` (or ``qdistill train --nproc N``) every process trains its shard of each
    global batch of ``data.batch_size``; only rank 0 writes files and returns the metrics (the
    others return ``{}``).
    """
    with process_group(cfg.train.dist_timeout, cfg.train.device):
        return _run_experiment(cfg, resume, overwrite, log if is_main() else None)


def _run_experiment(cfg: RunConfig, resume: bool, overwrite: bool, log: Callable[[str], None] | None) -> dict[str, Any]:
    out = ensure_writable(cfg.out)
    stale = check_out(cfg, resume, overwrite)
    barrier()  # every rank has checked the folder before rank 0 changes it
    for name in stale if is_main() else []:  # a fresh start leaves nothing of the run it replaces
        (out / name).unlink()
    if cfg.model.source == "hf":
        from qdistill.hf_experiment import run_hf_experiment

        return run_hf_experiment(cfg, out, resume, log)
    seed_everything(cfg.train.seed)
    splits, train, val, test = prepare_data(cfg.data)
    teacher = _teacher(splits, cfg.model)
    objective_cls = OBJECTIVES.get(cfg.method.name)
    calib = None
    if cfg.quant is not None or objective_cls.needs_teacher:
        calib = _calibration_batch(cfg, splits, train)
    teachers = [_teacher(splits, m, where) for where, m in cfg.teacher_sections()] if cfg.teachers else [teacher]
    if objective_cls.needs_teacher:
        for (where, _), model in zip(cfg.teacher_sections(), teachers, strict=True):
            _check_teacher_outputs(model, calib, f"{where}.pretrained")
    student = make_student(teacher, cfg.quant, calib)
    summary = getattr(student, "qdistill_summary", None)
    if log is not None and summary is not None:
        log(str(summary))
    if cfg.teachers:
        teacher = TeacherEnsemble(teachers)
    objective = build_objective(cfg.method.name, student, teacher, **cfg.method.params)
    labels = objective.uses_labels
    if labels and train.labels is None:
        raise DataError(f"method {cfg.method.name!r} needs labels but the training data has none")
    train_loader, val_loader = build_loaders(
        cfg.data,
        splits,
        train,
        val,
        labels,
        cfg.train.seed,
        *reversed(rank_and_world()),
        device=loader_device(cfg.data.on_device, pick_device(cfg.train.device)),
        channels_last=cfg.train.channels_last,
    )
    meta = {
        "config": cfg.to_dict(),
        "labels_used": labels,
        "num_classes": splits.num_classes,
        "in_channels": int(splits.train.images.shape[-1]),
    }
    trainer = Trainer(objective, train_loader, cfg.train, val_loader, out, meta)
    trainer.fit(resume=resume)  # leaves the best epoch's weights in the student
    if not is_main():
        return {}
    best_epoch = trainer.best["epoch"]
    snapped = _snap_biases(student, calib, trainer.device) if cfg.snap_biases and cfg.quant is not None else {}
    num_classes = cfg.model.num_classes or splits.num_classes
    save_model(
        out,
        student,
        {
            "model": {"name": cfg.model.name, "num_classes": num_classes, "in_channels": meta["in_channels"]},
            "quant": None if cfg.quant is None else cfg.quant.to_dict(),
            "labels_used": labels,
            "teacher": cfg.model.pretrained,
            "best_epoch": best_epoch,
            "config": meta["config"],
        },
    )
    results = {
        "best_epoch": best_epoch,
        "labels_used": labels,
        "method": cfg.method.name,
        "weight_bits": cfg.quant.weight_bits if cfg.quant else 32,
        "act_bits": (cfg.quant.act_bits or 32) if cfg.quant else 32,
        "size_bytes": model_size_bytes(student),
        **snapped,
    }
    if test is not None:
        results.update(_test_metrics(student, teacher, test, splits, cfg, trainer.device))
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return results


def _snap_biases(student: nn.Module, calib: torch.Tensor, device: torch.device) -> dict[str, Any]:
    """Snap the student's folded biases to the integer runtime's grid; the largest move, in grid units."""
    from qdistill.export.onnx import snap_biases

    try:
        moves = snap_biases(student.cpu(), calib.cpu())
    finally:
        student.to(device)
    return {"biases_snapped": len(moves), "bias_snap_max_levels": max(moves.values(), default=0.0)}


def _test_metrics(student, teacher, test: ImageSet, splits: DataSplits, cfg: RunConfig, device) -> dict[str, float]:
    loader = BatchLoader(
        test, cfg.data.eval_batch_size, mean=splits.mean, std=splits.std, with_labels=test.labels is not None
    )
    metrics = evaluate(student, loader, teacher if cfg.model.pretrained or cfg.teachers else None, device)
    return {f"test_{k}": v for k, v in metrics.items() if k != "images"}


def load_run(run_dir: str | Path, which: str = "best") -> tuple[nn.Module, RunConfig, dict[str, Any]]:
    """Rebuild the trained student of a run folder: (model in eval mode, its config, its record).

    ``best`` reads a finished run's ``model.safetensors`` + ``model.json`` (create, quantize, load),
    or ``best.pt`` while the run is unfinished; ``last`` reads ``last.pt``. The record holds
    ``meta`` (config, labels_used, num_classes, in_channels) either way.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MissingFileError(f"run directory not found: {run_dir}")
    if which == "best" and (run_dir / "model.json").is_file():
        info = read_model_info(run_dir)
        arch, quant = info["model"], info.get("quant")
        meta = {
            "config": info["config"],
            "labels_used": info.get("labels_used"),
            "num_classes": arch.get("num_classes"),
            "in_channels": arch.get("in_channels"),
        }
        cfg = _stored_run_config(info["config"], run_dir / "model.json")
        quant_cfg = None if quant is None else QuantConfig.from_dict(quant)
        if arch.get("source") == "hf":
            model = _rebuild_hf(run_dir, arch.get("task"), quant_cfg, run_dir / "model.json")
        else:
            model = _rebuild(
                arch.get("name"), arch.get("num_classes"), arch.get("in_channels"), quant_cfg, run_dir / "model.json"
            )
        load_state_dict_file(model, run_dir / "model.safetensors")
        return model.to(pick_device("cpu")).eval(), cfg, {"meta": meta, "epoch": info.get("best_epoch")}
    path = run_dir / f"{which}.pt"
    if not path.is_file():
        raise MissingFileError(f"{run_dir} has neither model.json nor {which}.pt: is it a qdistill run folder?")
    state = load_checkpoint(path)
    meta = state.get("meta", {})
    if "config" not in meta or "student" not in state:
        raise CheckpointError(f"{path} has no run config or student weights; was it written by qdistill train?")
    cfg = _stored_run_config(meta["config"], path)
    num_classes = cfg.model.num_classes or meta.get("num_classes")
    if cfg.model.source == "hf":
        model = _rebuild_hf(run_dir, cfg.model.task, cfg.quant, path)
    else:
        model = _rebuild(cfg.model.name, num_classes, meta.get("in_channels"), cfg.quant, path)
    try:
        model.load_state_dict(state["student"])
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not fit {cfg.model.name}: {str(e).splitlines()[0]}") from None
    return model.to(pick_device("cpu")).eval(), cfg, state


def _stored_run_config(config: Any, where: Path) -> RunConfig:
    """A config recorded in a run folder, validated (and laid out as `RunConfig.to_dict` writes it now)."""
    try:
        return RunConfig.from_dict(config)
    except QdistillError as e:
        raise CheckpointError(f"{where}: its recorded config is not valid ({e})") from None


def _rebuild(name: Any, num_classes: Any, in_channels: Any, quant: QuantConfig | None, where: Path) -> nn.Module:
    """An untrained student of the recorded architecture, quantized as recorded."""
    try:
        model = create_model(name, num_classes=num_classes, in_channels=in_channels)
    except QdistillError as e:
        raise CheckpointError(f"{where}: cannot rebuild the model it records ({e})") from None
    return model if quant is None else quantize(model, quant)


def _rebuild_hf(run_dir: Path, task: Any, quant: QuantConfig | None, where: Path) -> nn.Module:
    """An untrained Hugging Face student from the run's ``config.json``, quantized as recorded."""
    from qdistill.models.hf import build_hf_model

    try:
        model = build_hf_model(run_dir, task)
    except QdistillError as e:
        raise CheckpointError(f"{where}: cannot rebuild the model it records ({e})") from None
    return model if quant is None else quantize(model, quant)

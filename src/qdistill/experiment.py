"""A whole run from one config: data -> teacher -> quantized student -> training -> test metrics.

This is what ``qdistill train CONFIG.yaml`` executes; Python users can call `run_experiment`
with a `RunConfig`, or use the pieces (`create_model`, `make_student`, `build_objective`,
`Trainer`) directly in their own loop.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from qdistill.config import apply_overrides, from_dict
from qdistill.data import BatchLoader, DataSplits, ImageSet, load_dataset, split_holdout
from qdistill.distill.ensemble import TeacherEnsemble
from qdistill.distill.objectives import build_objective
from qdistill.distill.student import make_student
from qdistill.models import create_model
from qdistill.quant.api import quantize
from qdistill.quant.config import QuantConfig
from qdistill.train.checkpoint import load_checkpoint
from qdistill.train.config import TrainConfig
from qdistill.train.evaluate import evaluate
from qdistill.train.trainer import Trainer, pick_device

__all__ = [
    "DataConfig",
    "MethodConfig",
    "ModelConfig",
    "RunConfig",
    "build_loaders",
    "load_config",
    "load_run",
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
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("data.batch_size and data.eval_batch_size must be >= 1")


@dataclass(frozen=True)
class ModelConfig:
    """The teacher architecture and its weights; the student is a quantized copy of it."""

    name: str = "smallcnn"
    pretrained: str | None = None
    num_classes: int | None = None
    in_channels: int | None = None


@dataclass(frozen=True)
class MethodConfig:
    """The training objective by name (see ``qdistill.distill.OBJECTIVES``) and its parameters."""

    name: str = "sqakd"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs. ``quant: None`` trains a full-precision model (e.g. a teacher).

    ``teachers`` (optional) replaces the single teacher by a frozen ensemble of these models, of
    any architectures (e.g. ResNet-32 and ResNet-56 for a ResNet-20 ``model``); the student is
    still a quantized copy of ``model``. Used by ``ekd`` (and by any method that takes a teacher).
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    quant: QuantConfig | None = field(default_factory=QuantConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    out: str = "runs/default"
    calib_images: int = 256
    teachers: tuple[ModelConfig, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "teachers", tuple(self.teachers))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        d = dict(d)
        known = ("model", "data", "quant", "method", "train", "out", "calib_images", "teachers")
        for key in d:
            if key not in known:
                raise ValueError(f"config: unknown top-level key {key!r}; allowed: {', '.join(known)}")
        quant = d.get("quant", {})
        teachers = d.get("teachers") or []
        if not isinstance(teachers, (list, tuple)):
            raise ValueError("teachers: expected a list of model sections, e.g. [{name: resnet32, pretrained: t32.th}]")
        return cls(
            model=from_dict(ModelConfig, d.get("model"), "model"),
            data=from_dict(DataConfig, d.get("data"), "data"),
            quant=None if quant is None else QuantConfig.from_dict(quant),
            method=from_dict(MethodConfig, d.get("method"), "method"),
            train=TrainConfig.from_dict(d.get("train")),
            out=str(d.get("out", "runs/default")),
            calib_images=int(d.get("calib_images", 256)),
            teachers=tuple(from_dict(ModelConfig, t, f"teachers[{i}]") for i, t in enumerate(teachers)),
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["quant"] = None if self.quant is None else self.quant.to_dict()
        return d


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config, apply ``key=value`` overrides and validate it all before anything runs."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: invalid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(tree, dict):
        raise ValueError(f"{path}: expected a mapping of sections at the top level")
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


def build_loaders(cfg: DataConfig, splits: DataSplits, train: ImageSet, val: ImageSet | None, labels: bool, seed: int):
    """Training loader (labels only if the method reads them) and validation loader."""
    norm = dict(mean=splits.mean, std=splits.std)
    augment = cfg.augment or splits.augment
    train_data = train if labels else train.without_labels()
    train_loader = BatchLoader(train_data, cfg.batch_size, **norm, augment=augment, shuffle=True,
                               drop_last=len(train) > cfg.batch_size, seed=seed, with_labels=labels)  # fmt: skip
    val_loader = None
    if val is not None:
        val_data = val if labels else val.without_labels()
        val_loader = BatchLoader(val_data, cfg.eval_batch_size, **norm, with_labels=labels)
    return train_loader, val_loader


def _teacher(cfg: RunConfig, splits: DataSplits, m: ModelConfig | None = None) -> nn.Module:
    m = m or cfg.model
    num_classes = m.num_classes or splits.num_classes
    if num_classes is None:
        raise ValueError("model.num_classes is required when the data has no labels")
    in_channels = m.in_channels or splits.train.images.shape[-1]
    return create_model(m.name, num_classes=num_classes, in_channels=in_channels, pretrained=m.pretrained)


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


def run_experiment(cfg: RunConfig, resume: bool = False) -> dict[str, Any]:
    """Train the configured student and return (and write to ``OUT/results.json``) its test metrics."""
    out = Path(cfg.out)
    splits, train, val, test = prepare_data(cfg.data)
    teacher = _teacher(cfg, splits)
    calib = None
    if cfg.quant is not None:
        calib_set = train.without_labels()
        calib_loader = BatchLoader(_take(calib_set, cfg.calib_images, cfg.data.seed), cfg.calib_images,
                                   mean=splits.mean, std=splits.std, with_labels=False)  # fmt: skip
        calib = next(iter(calib_loader))
    student = make_student(teacher, cfg.quant, calib)
    if cfg.teachers:
        teacher = TeacherEnsemble([_teacher(cfg, splits, m) for m in cfg.teachers])
    objective = build_objective(cfg.method.name, student, teacher, **cfg.method.params)
    labels = objective.uses_labels
    if labels and train.labels is None:
        raise ValueError(f"method {cfg.method.name!r} needs labels but the training data has none")
    train_loader, val_loader = build_loaders(cfg.data, splits, train, val, labels, cfg.train.seed)
    meta = {"config": cfg.to_dict(), "labels_used": labels, "num_classes": splits.num_classes,
            "in_channels": int(splits.train.images.shape[-1])}  # fmt: skip
    trainer = Trainer(objective, train_loader, cfg.train, val_loader, out, meta)
    trainer.fit(resume=resume)
    best = load_checkpoint(out / "best.pt", map_location=trainer.device)
    student.load_state_dict(best["student"])
    torch.save(student.state_dict(), out / "model.pt")
    results = {"best_epoch": best["epoch"], "labels_used": labels, "method": cfg.method.name,
               "weight_bits": cfg.quant.weight_bits if cfg.quant else 32,
               "act_bits": (cfg.quant.act_bits or 32) if cfg.quant else 32,
               "size_bytes": model_size_bytes(student)}  # fmt: skip
    if test is not None:
        results.update(_test_metrics(student, teacher, test, splits, cfg, trainer.device))
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return results


def _test_metrics(student, teacher, test: ImageSet, splits: DataSplits, cfg: RunConfig, device) -> dict[str, float]:
    loader = BatchLoader(test, cfg.data.eval_batch_size, mean=splits.mean, std=splits.std, with_labels=test.labels is not None)
    metrics = evaluate(student, loader, teacher if cfg.model.pretrained or cfg.teachers else None, device)
    return {f"test_{k}": v for k, v in metrics.items() if k != "images"}


def load_run(run_dir: str | Path, which: str = "best") -> tuple[nn.Module, RunConfig, dict[str, Any]]:
    """Rebuild the trained student of a run directory: (model in eval mode, its config, checkpoint meta)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    state = load_checkpoint(run_dir / f"{which}.pt")
    meta = state.get("meta", {})
    if "config" not in meta:
        raise ValueError(f"{run_dir / (which + '.pt')} has no run config; was it written by qdistill train?")
    cfg = RunConfig.from_dict(meta["config"])
    model = create_model(cfg.model.name, num_classes=meta["num_classes"] or cfg.model.num_classes,
                         in_channels=meta["in_channels"])  # fmt: skip
    if cfg.quant is not None:
        quantize(model, cfg.quant)
    try:
        model.load_state_dict(state["student"])
    except RuntimeError as e:
        raise ValueError(f"{run_dir}: checkpoint does not fit {cfg.model.name}: {str(e).splitlines()[0]}") from None
    return model.to(pick_device("cpu")).eval(), cfg, state

"""The one-phase trainer shared by every method (SQAKD, supervised QAT, KD baselines, ...)."""

from __future__ import annotations

import itertools
import math
import random
import warnings
from collections.abc import Iterable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from qdistill.batch import Inputs, split_batch, to_device
from qdistill.data import BatchLoader
from qdistill.data.loader import EpochLoader
from qdistill.distill.objectives import Objective
from qdistill.errors import CheckpointError, ConfigError, DataError, DivergedError
from qdistill.quant.base import Quantizer
from qdistill.quant.callbacks import training_callbacks
from qdistill.train import distributed, fsdp
from qdistill.train.callbacks import EVENTS
from qdistill.train.checkpoint import load_checkpoint, remove_stale_tmp, require_keys, save_checkpoint
from qdistill.train.compile import fast_step_callbacks
from qdistill.train.config import DIVERGE_WINDOW, TrainConfig
from qdistill.train.evaluate import evaluate
from qdistill.train.metrics import MetricsLog, TensorBoardLog

__all__ = ["CHECK_EVERY", "Trainer", "pick_device", "seed_everything"]

# steps between the host's looks at the step logs: the divergence checks of those steps and the
# progress bar's loss cost one host sync per CHECK_EVERY steps instead of one per step
CHECK_EVERY = 25

# what `Trainer.load_state_dict` reads: a last.pt without one of these is not a training checkpoint
STATE_KEYS = (
    "epoch",
    "step",
    "sums",
    "row",
    "student",
    "objective",
    "optimizer",
    "scheduler",
    "rng",
    "best",
    "history",
    "start_losses",
)


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    """Every RNG the run draws from, as tensors and plain types (loadable with ``weights_only=True``)."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state((npy["kind"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def param_groups(objective: Objective, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Weights (with weight decay) vs quantizer parameters (own lr, no weight decay).

    The objective's own trainable parts (regressors, balance scalars) train like weights, except those
    of a module with an ``own_lr`` (e.g. GoR's ``balance_lr``): a group at that lr, no weight decay.
    """
    quant_ids = {id(p) for m in objective.student.modules() if isinstance(m, Quantizer) for p in m.parameters()}
    own = [(m.own_lr, list(m.parameters())) for m in objective.modules() if getattr(m, "own_lr", None) is not None]
    own_ids = {id(p) for _, ps in own for p in ps}
    params = [p for p in list(objective.student.parameters()) + list(objective.parameters()) if p.requires_grad]
    weights = [p for p in params if id(p) not in quant_ids | own_ids]
    quant = [p for p in params if id(p) in quant_ids]
    groups = [{"params": weights, "weight_decay": cfg.weight_decay, "lr": cfg.lr}]
    if quant:
        groups.append({"params": quant, "weight_decay": 0.0, "lr": cfg.quant_lr or cfg.lr})
    groups += [{"params": ps, "weight_decay": 0.0, "lr": lr} for lr, ps in own]
    return groups


def make_optimizer(groups: list[dict[str, Any]], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    return torch.optim.Adam(groups, lr=cfg.lr)


def cosine_with_warmup(total_steps: int, warmup_steps: int):
    """LR multiplier per step: linear warm-up, then cosine decay to zero."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _numbers(logs: dict[str, torch.Tensor | float]) -> dict[str, float]:
    """Logs as Python floats (a host sync: only where they are logged or saved)."""
    return {k: float(v) for k, v in logs.items()}


def _steps_per_epoch(loader: Iterable, max_steps: int | None) -> int:
    try:
        n = len(loader)  # type: ignore[arg-type]
    except TypeError:
        if max_steps is None:
            raise ConfigError("the training data has no len(): set train.max_steps (steps per epoch)") from None
        return max_steps
    if n == 0:
        raise DataError("the training data yields no batch: use a smaller batch size or more images")
    return min(n, max_steps or n)


class Trainer:
    """Trains ``objective.student`` on ``train_loader`` and keeps the run resumable.

    Each epoch: the callbacks' epoch start (e.g. the quantizer-delta refresh of quant/callbacks.py,
    from the same loss the run trains on), one pass of optimisation, validation, metrics, and one atomic ``last.pt`` that also holds
    the best epoch's student weights; ``best.pt`` is then written from it (and re-written from it
    on resume, so a kill between the two writes loses nothing). Label-free runs choose the best
    epoch by teacher agreement, so labels are never read; others by validation top-1; without a
    validation loader the latest epoch is the best. `fit` returns with the best epoch's weights
    in the student, not the last epoch's.

    Args:
        objective: the loss (it knows the student and the frozen teacher).
        train_loader: any iterable of batches: images, ``(images, labels)`` or dicts (labels only
            when ``objective.uses_labels``); ``set_epoch`` is called when it has one. qdistill's
            qdistill's loaders (`BatchLoader`, text blocks) resume exactly mid-epoch; others at the last
            completed epoch.
            Without ``len()``, ``cfg.max_steps`` sets the epoch length.
        val_loader: optional; carved from the training data, never the test set.
        out_dir: where checkpoints and metrics go; None keeps everything in memory.
        meta: saved in every checkpoint (model name, quant config, ...), enough to rebuild the model;
            plain types only (checkpoints are read with ``weights_only=True``).
        callbacks: extra objects with some of the `qdistill.train.callbacks.Callback` methods
            (loggers, ...); they run after the quantizer callbacks and before the metrics files.

    In a torch.distributed process group (``torchrun``, see `qdistill.train.distributed`) the
    student and the objective are wrapped for data parallel training (``cfg.distributed``), each
    rank must get its shard of every global batch (`BatchLoader(num_shards=, shard=)`), step logs
    are the mean over ranks, and only rank 0 writes checkpoints and metrics.
    """

    def __init__(
        self,
        objective: Objective,
        train_loader: Iterable,
        cfg: TrainConfig,
        val_loader: Iterable | None = None,
        out_dir: str | Path | None = None,
        meta: dict[str, Any] | None = None,
        callbacks: Iterable[Any] = (),
    ) -> None:
        self.objective, self.cfg = objective, cfg
        self.student = objective.student
        if not cfg.dropout:
            for m in self.student.modules():
                if isinstance(m, nn.modules.dropout._DropoutNd):
                    m.p = 0.0
        self.train_loader, self.val_loader = train_loader, val_loader
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.meta = dict(meta or {})
        self.device = pick_device(cfg.device)
        for m in (self.student, objective, objective.teacher):
            if m is not None:
                m.to(self.device)
        self.steps_per_epoch = _steps_per_epoch(train_loader, cfg.max_steps)
        self.exact_resume = isinstance(train_loader, EpochLoader)  # qdistill's loaders restart mid-epoch
        self.main = distributed.is_main()  # the process that writes files
        self.step_module: nn.Module = objective  # called as step_module(inputs, labels) -> (loss, logs)
        if distributed.active():
            _, world = distributed.rank_and_world()
            if isinstance(train_loader, BatchLoader) and train_loader.num_shards != world:
                raise ConfigError(
                    f"{world} processes train but the BatchLoader has {train_loader.num_shards} "
                    f"shard(s): build it with num_shards={world}, shard=rank"
                )
            self.step_module = distributed.wrap(objective, self.device, cfg.distributed)
        self.sharded = fsdp.is_sharded(self.student)  # FSDP: state dicts are gathered by every rank
        self.optimizer = make_optimizer(param_groups(objective, cfg), cfg)
        total = cfg.epochs * self.steps_per_epoch
        warmup = round(cfg.warmup_epochs * self.steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, cosine_with_warmup(total, warmup))
        self.epoch = 0  # epochs completed
        self.step = 0  # steps completed in the current epoch (non-zero only when stopped mid-epoch)
        self.sums: dict[str, torch.Tensor | float] = {}  # running float64 sums of this epoch's logs, on the device
        self._unchecked: list[tuple[int, torch.Tensor]] = []  # (step, [loss, weights finite]) not yet checked
        self.row: dict[str, Any] = {}  # this epoch's metrics so far
        self.best: dict[str, Any] = {}  # score, epoch and student weights of the best epoch so far
        self.history: list[dict[str, Any]] = []
        self.start_losses: list[float] = []  # the run's first DIVERGE_WINDOW losses: divergence reference
        self.callbacks = [*fast_step_callbacks(cfg), *training_callbacks(cfg), *callbacks]
        if self.out_dir is not None and self.main:
            self.callbacks.append(MetricsLog(self.out_dir))
            if cfg.tensorboard:
                self.callbacks.append(TensorBoardLog(self.out_dir))
        use_bf16 = cfg.amp == "bf16" or (cfg.amp == "auto" and self.device.type == "cuda")
        self.autocast = (lambda: torch.autocast(self.device.type, dtype=torch.bfloat16)) if use_bf16 else nullcontext

    def _emit(self, event: str, *args: Any) -> None:
        assert event in EVENTS
        for cb in self.callbacks:
            hook = getattr(cb, event, None)
            if hook is not None:
                hook(self, *args)

    # -- checkpointing ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "step": self.step,
            "sums": _numbers(self.sums),
            "row": self.row,
            "student": fsdp.full_state_dict(self.student),
            "objective": self.objective.state_dict(),
            "optimizer": fsdp.full_optimizer_state(self.optimizer),
            "scheduler": self.scheduler.state_dict(),
            "rng": _rng_state(),
            "best": self.best,
            "history": self.history,
            "start_losses": self.start_losses,
            "train_config": self.cfg.to_dict(),
            "meta": self.meta,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        fsdp.load_state_dict(self.student, state["student"])
        self.objective.load_state_dict(state["objective"])
        fsdp.load_optimizer_state(self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        self.epoch, self.step, self.sums, self.row = state["epoch"], state["step"], state["sums"], state["row"]
        self.best, self.history = state["best"], list(state["history"])
        self.start_losses = list(state["start_losses"])

    def resume(self) -> bool:
        """Continue from ``out_dir/last.pt`` if it exists, re-deriving ``best.pt`` from it; True when resumed."""
        path = None if self.out_dir is None else self.out_dir / "last.pt"
        if path is None or not path.exists():
            return False
        state = load_checkpoint(path, map_location=self.device)
        require_keys(state, STATE_KEYS, path)
        if state["step"] and not self.exact_resume:
            raise CheckpointError(f"{path} stopped mid-epoch; resuming it needs qdistill's BatchLoader as train_loader")
        self.load_state_dict(state)
        self._write_best()
        return True

    def _write_best(self) -> None:
        """``best.pt``: a copy of the best epoch recorded in ``last.pt``, enough to rebuild the student."""
        if self.out_dir is not None and self.main and self.best:
            best = {
                "epoch": self.best["epoch"],
                "score": self.best["score"],
                "student": self.best["student"],
                "train_config": self.cfg.to_dict(),
                "meta": self.meta,
            }
            save_checkpoint(best, self.out_dir / "best.pt")

    def _write_last(self) -> None:
        if self.out_dir is not None and (self.main or self.sharded):  # gathering shards takes every rank
            state = self.state_dict()
            if self.main:
                save_checkpoint(state, self.out_dir / "last.pt")

    # -- training --------------------------------------------------------------------------------
    def _to_device(self, batch: Any) -> tuple[Inputs, torch.Tensor | None]:
        inputs, labels = split_batch(batch)
        if labels is not None and not self.objective.uses_labels:
            raise DataError(
                f"the label-free method {type(self.objective).__name__} was given labelled batches: "
                "drop the labels from its data (BatchLoader: with_labels=False)"
            )
        return to_device(inputs, self.device), None if labels is None else labels.to(self.device)

    def _set_epoch(self, epoch: int, step: int = 0) -> None:
        if self.exact_resume:
            self.train_loader.set_epoch(epoch, step)
        elif hasattr(self.train_loader, "set_epoch"):
            self.train_loader.set_epoch(epoch)

    def sample_batches(self, n: int) -> list[tuple[Inputs, torch.Tensor | None]]:
        """The first ``n`` batches of the current epoch, on the device (for estimates such as a Hessian trace)."""
        self._set_epoch(self.epoch)
        return [self._to_device(b) for b in itertools.islice(self.train_loader, n)]

    def train_epoch(self) -> dict[str, float]:
        """One pass over the training data, resuming at ``self.step`` if a checkpoint stopped mid-epoch."""
        self.student.train()
        self.objective.train()
        self._set_epoch(self.epoch, self.step)
        self._unchecked = []  # a pass an error ended leaves nothing for this one to check
        progress = None
        if self.cfg.progress and self.main:
            from tqdm import tqdm

            progress = tqdm(
                total=self.steps_per_epoch,
                initial=self.step,
                leave=False,
                desc=f"epoch {self.epoch + 1}/{self.cfg.epochs}",
            )
        every = self.cfg.checkpoint_every if self.exact_resume and self.out_dir is not None else None
        for batch in self.train_loader:
            if self.step == self.steps_per_epoch:
                break
            logs = self.train_step(*self._to_device(batch))
            for k, v in logs.items():
                self.sums[k] = self.sums.get(k, 0.0) + v
            self.step += 1
            self._emit("on_step_end", logs)
            if progress is not None:
                progress.update(1)
            checkpoint = every and self.step % every == 0 and self.step < self.steps_per_epoch
            if checkpoint or self.step % CHECK_EVERY == 0:
                loss = self._check_steps()  # before a checkpoint, so none holds a diverged state
                if progress is not None:
                    progress.set_postfix(loss=f"{loss:.4f}")
            if checkpoint:
                self._write_last()
        self._check_steps()
        if progress is not None:
            progress.close()
        if self.step == 0:
            raise DataError(f"the training data yielded no batch in epoch {self.epoch + 1}")
        means = {f"train_{k}": v / self.step for k, v in _numbers(self.sums).items()}
        self.step, self.sums = 0, {}
        return means

    def _diverged(self, step: int, what: str) -> DivergedError:
        return DivergedError(
            f"training diverged at epoch {self.epoch + 1}, step {step}: {what}; "
            "lower train.lr (or set train.grad_clip) and check the data"
        )

    def _check_loss(self, step: int, loss: float) -> None:
        """Stop on a non-finite loss or one far above the run's start (see `TrainConfig.diverge_factor`)."""
        if not math.isfinite(loss):
            raise self._diverged(step, f"loss is {loss}")
        factor = self.cfg.diverge_factor
        if factor is not None and self.start_losses and loss > self.cfg.diverge_min_loss:
            ref = sum(self.start_losses) / len(self.start_losses)
            if loss > factor * abs(ref):
                raise self._diverged(step, f"loss is {loss:.4g}, over {factor:g}x the first steps' mean {ref:.4g}")
        if len(self.start_losses) < DIVERGE_WINDOW:
            self.start_losses.append(loss)

    def _check_steps(self) -> float:
        """The divergence checks of the steps since the last call, in step order, with one host sync;
        returns the last step's loss. Steps after a diverged one have run, but the run stops here,
        before any checkpoint is written (`train_epoch` calls this first)."""
        if not self._unchecked:
            return math.nan
        checks, self._unchecked = self._unchecked, []
        values = torch.stack([v for _, v in checks]).tolist()
        for (step, _), (loss, finite) in zip(checks, values):
            self._check_loss(step, loss)
            if not finite:
                raise self._diverged(step, "a weight became NaN or infinite after the optimizer step")
        return values[-1][0]

    def train_step(self, inputs: Inputs, labels: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """One optimizer step; returns its logs as float64 0-dim tensors on the device (no host sync:
        the loss and weight checks wait in ``_unchecked`` for `_check_steps`)."""
        with self.autocast():
            loss, logs = self.step_module(inputs, labels)
        logs = {k: torch.as_tensor(v, dtype=torch.float64, device=self.device) for k, v in logs.items()}
        logs = distributed.all_reduce_mean({"loss": loss.detach().double(), **logs})  # every rank sees the same
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        if self.cfg.grad_clip:
            nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        finite = fsdp.all_finite(params).to(logs["loss"])
        self._unchecked.append((self.step + 1, torch.stack((logs["loss"], finite))))
        return logs

    def validate(self) -> dict[str, float]:
        if self.val_loader is None:
            return {}
        metrics = evaluate(self.student, self.val_loader, self.objective.teacher, self.device)
        return {f"val_{k}": v for k, v in metrics.items() if k != "images"}

    def _score(self, row: dict[str, float]) -> float | None:
        key = "val_top1" if self.objective.uses_labels else "val_agreement"
        return row.get(key, row.get("val_agreement"))

    def _update_best(self, row: dict[str, Any]) -> bool:
        """Record this epoch as the best if it is (ties go to the later epoch); True when it is."""
        score = self._score(row)
        if score is not None and score < self.best.get("score", -math.inf):
            return False
        student = {k: v.detach().clone() for k, v in fsdp.full_state_dict(self.student).items()}
        self.best = {"score": score, "epoch": self.epoch, "student": student}
        return True

    def _start(self, resume: bool) -> None:
        if self.out_dir is not None and self.main:
            remove_stale_tmp(self.out_dir)
            if not self.exact_resume and (resume or self.cfg.checkpoint_every):
                warnings.warn(
                    f"train_loader is a {type(self.train_loader).__name__}, not a qdistill BatchLoader: checkpoints "
                    "are written at epoch ends only, so a resumed run restarts at the last completed epoch",
                    stacklevel=3,
                )
        if not (resume and self.resume()):
            seed_everything(self.cfg.seed)

    def fit(self, resume: bool = False) -> list[dict[str, Any]]:
        """Train to ``cfg.epochs`` and return the per-epoch metrics; the student ends with the best
        epoch's weights (see the class docstring). With ``resume`` continue from ``out_dir/last.pt``.

        The objective is closed (its hooks removed) when fit returns or fails.
        """
        try:
            self._start(resume)
            self._emit("on_fit_start")
            while self.epoch < self.cfg.epochs:
                if self.step == 0:
                    self.row = {"epoch": self.epoch + 1}
                    with fsdp.whole_weights(self.student) if self.sharded else nullcontext():
                        self._emit("on_epoch_start", self.row)  # EWGS's estimate differentiates twice
                row = self.row
                row.update(self.train_epoch())
                row["lr"] = self.scheduler.get_last_lr()[0]
                row.update(self.validate())
                row.update(self.objective.extra_logs())
                self.epoch += 1
                self.history.append(row)
                improved = self._update_best(row)
                self._emit("on_epoch_end", row)
                self._write_last()
                if improved:
                    self._write_best()
            if self.best:
                fsdp.load_state_dict(self.student, self.best["student"])
            if self.sharded:  # what follows fit (evaluation, export) gets the plain student
                fsdp.release(self.student)
                self.sharded = False
        finally:
            self._emit("on_fit_end")
            self.objective.close()
        return self.history

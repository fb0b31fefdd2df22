"""The one-phase trainer shared by every method (SQAKD, supervised QAT, KD baselines, ...)."""

from __future__ import annotations

import math
import random
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from qdistill.distill.objectives import Objective
from qdistill.quant.api import named_quantizers
from qdistill.quant.base import Quantizer
from qdistill.quant.fake_quant import use_compiled_kernels
from qdistill.quant.hessian import update_ewgs_delta
from qdistill.train.checkpoint import load_checkpoint, save_checkpoint
from qdistill.train.config import TrainConfig
from qdistill.train.evaluate import evaluate, split_batch
from qdistill.train.metrics import MetricsLog

__all__ = ["Trainer", "pick_device", "seed_everything"]


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def param_groups(objective: Objective, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Weights (with weight decay) vs quantizer parameters (own lr, no weight decay).

    The objective's own trainable parts (regressors, balance scalars) train like weights.
    """
    quant_ids = {id(p) for m in objective.student.modules() if isinstance(m, Quantizer) for p in m.parameters()}
    params = [p for p in list(objective.student.parameters()) + list(objective.parameters()) if p.requires_grad]
    weights = [p for p in params if id(p) not in quant_ids]
    quant = [p for p in params if id(p) in quant_ids]
    groups = [{"params": weights, "weight_decay": cfg.weight_decay, "lr": cfg.lr}]
    if quant:
        groups.append({"params": quant, "weight_decay": 0.0, "lr": cfg.quant_lr or cfg.lr})
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


class Trainer:
    """Trains ``objective.student`` on ``train_loader`` and keeps the run resumable.

    Each epoch: refresh EWGS deltas (every ``ewgs_every`` epochs, from the same loss the run
    trains on), one pass of optimisation, validation, metrics, and an atomic ``last.pt``; the best
    epoch on the validation split is copied to ``best.pt``. Label-free runs choose the best epoch by
    teacher agreement, so labels are never read; others by validation top-1.

    Args:
        objective: the loss (it knows the student and the frozen teacher).
        train_loader: iterable of images, or (images, labels) when ``objective.uses_labels``;
            needs ``set_epoch(epoch)`` and ``len()`` for deterministic resumption.
        val_loader: optional; carved from the training data, never the test set.
        out_dir: where checkpoints and metrics go; None keeps everything in memory.
        meta: saved in every checkpoint (model name, quant config, ...), enough to rebuild the model.
    """

    def __init__(
        self,
        objective: Objective,
        train_loader: Any,
        cfg: TrainConfig,
        val_loader: Any = None,
        out_dir: str | Path | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.objective, self.cfg = objective, cfg
        self.student = objective.student
        self.train_loader, self.val_loader = train_loader, val_loader
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.meta = dict(meta or {})
        self.device = pick_device(cfg.device)
        if cfg.compile_quantizers:
            use_compiled_kernels(True)
        for m in (self.student, objective, objective.teacher):
            if m is not None:
                m.to(self.device)
        self.steps_per_epoch = min(len(train_loader), cfg.max_steps or len(train_loader))
        if self.steps_per_epoch == 0:
            raise ValueError("the training data yields no batch: use a smaller batch size or more images")
        self.optimizer = make_optimizer(param_groups(objective, cfg), cfg)
        total = cfg.epochs * self.steps_per_epoch
        warmup = int(round(cfg.warmup_epochs * self.steps_per_epoch))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, cosine_with_warmup(total, warmup))
        self.epoch = 0  # epochs completed
        self.step = 0  # steps completed in the current epoch (non-zero only when stopped mid-epoch)
        self.sums: dict[str, float] = {}  # running sums of this epoch's logs
        self.row: dict[str, Any] = {}  # this epoch's metrics so far
        self.best: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        use_bf16 = cfg.amp == "bf16" or (cfg.amp == "auto" and self.device.type == "cuda")
        self.autocast = (
            (lambda: torch.autocast(self.device.type, dtype=torch.bfloat16)) if use_bf16 else nullcontext
        )

    # -- checkpointing ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "step": self.step,
            "sums": self.sums,
            "row": self.row,
            "student": self.student.state_dict(),
            "objective": self.objective.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": _rng_state(),
            "best": self.best,
            "history": self.history,
            "train_config": self.cfg.to_dict(),
            "meta": self.meta,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.student.load_state_dict(state["student"])
        self.objective.load_state_dict(state["objective"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        self.epoch, self.step, self.sums, self.row = state["epoch"], state["step"], state["sums"], state["row"]
        self.best, self.history = state["best"], list(state["history"])

    def resume(self) -> bool:
        """Continue from ``out_dir/last.pt`` if it exists; True when resumed."""
        if self.out_dir is None or not (self.out_dir / "last.pt").exists():
            return False
        self.load_state_dict(load_checkpoint(self.out_dir / "last.pt", map_location=self.device))
        return True

    # -- training --------------------------------------------------------------------------------
    def _to_device(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        images, labels = split_batch(batch)
        if labels is not None and not self.objective.uses_labels:
            raise RuntimeError("a label-free method was given labelled batches: build its loader with with_labels=False")
        return images.to(self.device, non_blocking=True), None if labels is None else labels.to(self.device)

    def _update_ewgs(self) -> dict[str, float]:
        if not any(q.backward_mode == "ewgs" for _, q in named_quantizers(self.student)):
            return {}
        self.train_loader.set_epoch(self.epoch)
        batches = []
        for i, batch in enumerate(self.train_loader):
            if i == self.cfg.hessian_batches:
                break
            batches.append(self._to_device(batch))
        gen = torch.Generator().manual_seed(self.cfg.seed * 1000 + self.epoch)
        self.student.train()
        self.objective.train()
        return update_ewgs_delta(self.student, batches, lambda b: self.objective(*b)[0], self.cfg.hessian_probes, gen)

    def train_epoch(self) -> dict[str, float]:
        """One pass over the training data, resuming at ``self.step`` if a checkpoint stopped mid-epoch."""
        self.student.train()
        self.objective.train()
        self.train_loader.set_epoch(self.epoch, self.step)
        progress = None
        if self.cfg.progress:
            from tqdm import tqdm

            progress = tqdm(total=self.steps_per_epoch, initial=self.step, leave=False,
                            desc=f"epoch {self.epoch + 1}/{self.cfg.epochs}")  # fmt: skip
        for batch in self.train_loader:
            if self.step == self.steps_per_epoch:
                break
            logs = self.train_step(*self._to_device(batch))
            for k, v in logs.items():
                self.sums[k] = self.sums.get(k, 0.0) + v
            self.step += 1
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{logs['loss']:.4f}")
            every = self.cfg.checkpoint_every
            if every and self.out_dir is not None and self.step % every == 0 and self.step < self.steps_per_epoch:
                save_checkpoint(self.state_dict(), self.out_dir / "last.pt")
        if progress is not None:
            progress.close()
        means = {f"train_{k}": v / self.step for k, v in self.sums.items()}
        self.step, self.sums = 0, {}
        return means

    def train_step(self, images: torch.Tensor, labels: torch.Tensor | None) -> dict[str, float]:
        with self.autocast():
            loss, logs = self.objective(images, labels)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss is {loss.item()} at epoch {self.epoch + 1}, step {self.step + 1}: lower train.lr or check the data"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip:
            nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]], self.cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return {"loss": float(loss.detach()), **logs}

    def validate(self) -> dict[str, float]:
        if self.val_loader is None:
            return {}
        metrics = evaluate(self.student, self.val_loader, self.objective.teacher, self.device)
        return {f"val_{k}": v for k, v in metrics.items() if k != "images"}

    def _score(self, row: dict[str, float]) -> float | None:
        key = "val_top1" if self.objective.uses_labels else "val_agreement"
        return row.get(key, row.get("val_agreement"))

    def fit(self, resume: bool = False) -> list[dict[str, Any]]:
        """Train to ``cfg.epochs``; with ``resume`` continue from the last checkpoint in out_dir."""
        if not (resume and self.resume()):
            seed_everything(self.cfg.seed)
        log = MetricsLog(self.out_dir, self.cfg.tensorboard, self.history)
        try:
            while self.epoch < self.cfg.epochs:
                if self.step == 0:
                    self.row = {"epoch": self.epoch + 1}
                    if self.cfg.ewgs_every and self.epoch % self.cfg.ewgs_every == 0:
                        deltas = self._update_ewgs()
                        if deltas:
                            self.row["ewgs_delta_mean"] = float(np.mean(list(deltas.values())))
                row = self.row
                row.update(self.train_epoch())
                row["lr"] = self.scheduler.get_last_lr()[0]
                row.update(self.validate())
                row.update(self.objective.extra_logs())
                self.epoch += 1
                self.history.append(row)
                score = self._score(row)
                improved = score is not None and score >= self.best.get("score", -math.inf)
                if improved:
                    self.best = {"score": score, "epoch": self.epoch}
                log.log(row)
                if self.out_dir is not None:
                    save_checkpoint(self.state_dict(), self.out_dir / "last.pt")
                    if improved or score is None:
                        save_checkpoint(self.state_dict(), self.out_dir / "best.pt")
        finally:
            log.close()
        return self.history

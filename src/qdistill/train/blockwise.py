"""Block-wise reconstruction, an optional first phase before end-to-end distillation (EfficientQAT's Block-AP).

The blocks are the model's ModuleList of identical modules with the most parameters (a decoder's
``model.layers``, GPT-2's ``transformer.h``, BERT's ``encoder.layer``). One teacher forward per
batch records, with forward pre-hooks (``with_kwargs=True``), the hidden states entering the first
block and every block's other arguments (attention mask, position embeddings, ...). Then, one block
at a time, the float teacher block maps its inputs to targets, and the quantized student block is
trained on those same inputs (the teacher's own, not the student's) to reproduce them: MSE on the
output hidden states, only that block's weights and quantizer parameters in the optimizer. The
targets are the next block's inputs, so only one block's inputs are held at a time; this assumes,
as those models do, that a block's output is the next block's input.

With a folder, each finished block is saved there (``block_NNN.pt``: its weights and its MSE before
and after): a resumed run loads the finished blocks and trains only the rest.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qdistill.batch import Inputs, call_model
from qdistill.errors import ConfigError, DivergedError
from qdistill.quant.base import Quantizer
from qdistill.quant.gptq import gptq_block_, gptq_layers, input_hessians
from qdistill.train.checkpoint import load_checkpoint, require_keys, save_checkpoint
from qdistill.train.config import TrainConfig

__all__ = ["blockwise_phase", "capture_block_inputs", "find_blocks"]


def find_blocks(model: nn.Module) -> str:
    """The name of `model`'s ModuleList of blocks: all children of one type, the most parameters of such lists."""
    lists = [
        (sum(p.numel() for p in m.parameters()), name)
        for name, m in model.named_modules()
        if isinstance(m, nn.ModuleList) and len(m) > 0 and len({type(c) for c in m}) == 1
    ]
    if not lists:
        raise ConfigError(f"train.blockwise_steps: {type(model).__name__} has no ModuleList of blocks to reconstruct")
    return max(lists)[1]


@dataclass(frozen=True)
class _Call:
    """A block's arguments other than the hidden states, and whether those came first positionally."""

    positional: bool
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    def __call__(self, block: nn.Module, hidden: Tensor) -> Tensor:
        out = (
            block(hidden, *self.args, **self.kwargs)
            if self.positional
            else block(*self.args, hidden_states=hidden, **self.kwargs)
        )
        return out[0] if isinstance(out, (tuple, list)) else out


class _Stop(Exception):
    """Raised by the last block's hook: nothing after its inputs is needed."""


@contextmanager
def _no_kv_cache(model: nn.Module) -> Iterator[None]:
    """A Hugging Face model's ``config.use_cache`` off, so the recorded arguments hold no cache to grow."""
    config = getattr(model, "config", None)
    old = getattr(config, "use_cache", None)
    if old:
        config.use_cache = False
    try:
        yield
    finally:
        if old:
            config.use_cache = old


@torch.no_grad()
def capture_block_inputs(
    model: nn.Module, blocks: nn.ModuleList, batches: Sequence[Inputs]
) -> tuple[list[Tensor], list[list[_Call]]]:
    """Per batch, the hidden states entering ``blocks[0]``; per block and batch, its other arguments."""
    hidden: list[Tensor] = []
    calls: list[list[_Call]] = [[] for _ in blocks]

    def hook(index: int):
        def record(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            positional = bool(args)
            h = args[0] if positional else kwargs["hidden_states"]
            rest = {k: v for k, v in kwargs.items() if positional or k != "hidden_states"}
            calls[index].append(_Call(positional, tuple(args[1:]), rest))
            if index == 0:
                hidden.append(h.detach())
            if index == len(blocks) - 1:
                raise _Stop

        return record

    handles = [b.register_forward_pre_hook(hook(i), with_kwargs=True) for i, b in enumerate(blocks)]
    was = model.training
    model.eval()
    try:
        with _no_kv_cache(model):
            for batch in batches:
                try:
                    call_model(model, batch)
                except _Stop:
                    pass
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return hidden, calls


@torch.no_grad()
def _mse(block: nn.Module, inputs: list[Tensor], calls: list[_Call], targets: list[Tensor]) -> float:
    was = block.training
    block.eval()
    try:
        return sum(float(F.mse_loss(c(block, x), t)) for x, c, t in zip(inputs, calls, targets)) / len(inputs)
    finally:
        block.train(was)


def _optimizer(block: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam on the block's weights (``blockwise_lr``) and quantizer parameters (``blockwise_quant_lr``)."""
    quant = {id(p) for m in block.modules() if isinstance(m, Quantizer) for p in m.parameters()}
    params = [p for p in block.parameters() if p.requires_grad]
    lr = cfg.blockwise_lr or cfg.lr
    groups = [
        {"params": [p for p in params if id(p) not in quant], "lr": lr},
        {"params": [p for p in params if id(p) in quant], "lr": cfg.blockwise_quant_lr or cfg.quant_lr or lr},
    ]
    return torch.optim.Adam([g for g in groups if g["params"]])


def _train_block(
    index: int, block: nn.Module, inputs: list[Tensor], calls: list[_Call], targets: list[Tensor], cfg: TrainConfig
) -> None:
    optimizer = _optimizer(block, cfg)
    was = block.training
    block.train()
    try:
        for step, b in zip(range(cfg.blockwise_steps), itertools.cycle(range(len(inputs)))):
            loss = F.mse_loss(calls[b](block, inputs[b]), targets[b])
            if not torch.isfinite(loss):
                raise DivergedError(
                    f"block-wise phase diverged at block {index}, step {step + 1}: lower train.blockwise_lr"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    finally:
        optimizer.zero_grad(set_to_none=True)
        block.train(was)


def _block_file(folder: Path | None, index: int) -> Path | None:
    return None if folder is None else folder / f"block_{index:03d}.pt"


def _load_finished(path: Path | None, block: nn.Module) -> dict[str, float] | None:
    """A finished block's report, its weights loaded into `block`; None when it is still to do."""
    if path is None or not path.is_file():
        return None
    state = load_checkpoint(path)
    require_keys(state, ("block", "report"), path)
    block.load_state_dict(state["block"])
    return state["report"]


def blockwise_phase(
    student: nn.Module,
    teacher: nn.Module,
    batches: Sequence[Inputs],
    cfg: TrainConfig,
    folder: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> list[dict[str, float]]:
    """Trains each quantized block of `student` to match `teacher`'s block on the teacher's inputs, for
    ``cfg.blockwise_steps`` steps cycling over `batches`; returns per block ``mse_before`` / ``mse_after``
    (mean over the batches). With `folder`, finished blocks are saved there and skipped when found."""
    name = find_blocks(teacher)
    s_blocks, t_blocks = student.get_submodule(name), teacher.get_submodule(name)
    folder = None if folder is None else Path(folder)
    files = [_block_file(folder, i) for i in range(len(s_blocks))]
    if all(f is not None and f.is_file() for f in files):  # a finished phase: no teacher pass needed
        return [_load_finished(f, b) for f, b in zip(files, s_blocks)]
    student.to(device)
    teacher.to(device)
    inputs, calls = capture_block_inputs(teacher, t_blocks, batches)
    report = []
    for i, (s_block, t_block) in enumerate(zip(s_blocks, t_blocks)):
        row = _load_finished(files[i], s_block)
        names = gptq_layers(s_block) if cfg.gptq and row is None else []
        with torch.no_grad(), input_hessians(t_block, names) as hessians:
            targets = [c(t_block, x) for x, c in zip(inputs, calls[i])]
        if row is None:
            row = {"block": i, "mse_before": _mse(s_block, inputs, calls[i], targets)}
            if cfg.gptq:
                row["gptq_proxy_ratio"] = gptq_block_(s_block, hessians, cfg.gptq_damp)
                row["mse_gptq"] = _mse(s_block, inputs, calls[i], targets)
            if cfg.blockwise_steps:
                _train_block(i, s_block, inputs, calls[i], targets, cfg)
            row["mse_after"] = _mse(s_block, inputs, calls[i], targets)
            if files[i] is not None:
                save_checkpoint({"block": s_block.state_dict(), "report": row}, files[i])
        report.append(row)
        inputs = targets  # the teacher's inputs to the next block
    return report

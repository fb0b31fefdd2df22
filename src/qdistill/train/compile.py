"""The fast training step: the objective's forward as one torch.compile graph, and channels_last.

`FastStep` is a trainer callback (switched on by ``train.compile`` / ``train.channels_last``). For
one fit it replaces the objective's forward (student forward, teacher forward under no_grad, loss)
with a ``torch.compile`` of it, quantizers included: their autograd Function and its custom
backward compile into the same forward and backward graphs. Eager stays the reference
(tests/train/test_compile.py checks the compiled losses and gradients against it) and is used
whenever a quantizer captures its output for EWGS's Hessian estimate, whose double backward
compiled graphs do not support. ``channels_last`` stores the conv weights and 4-D inputs in NHWC
order, which some CPU and GPU convolution kernels prefer (measure: benchmarks/train_step.py).
Everything is undone at fit end: the objective's own forward and the models' memory format.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from qdistill.quant.api import named_quantizers

if TYPE_CHECKING:
    from qdistill.train.config import TrainConfig
    from qdistill.train.trainer import Trainer

__all__ = ["COMPILE_MODES", "FastStep", "fast_step_callbacks"]

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _to_memory_format(models: list[nn.Module], fmt: torch.memory_format) -> None:
    for m in models:
        m.to(memory_format=fmt)


class FastStep:
    """Compile the objective's forward and/or run it channels_last for one fit (see the module docstring).

    Args:
        compile: torch.compile the objective's forward.
        mode / backend: passed to ``torch.compile`` (``aot_eager`` skips code generation: quick to
            build, for checking a model compiles).
        channels_last: NHWC weights and 4-D inputs.
    """

    def __init__(
        self, compile: bool = True, mode: str = "default", backend: str = "inductor", channels_last: bool = False
    ) -> None:
        self.compile, self.mode, self.backend, self.channels_last = compile, mode, backend, channels_last
        self._objective: nn.Module | None = None

    def _models(self, objective: nn.Module) -> list[nn.Module]:
        return [m for m in (objective.student, objective.teacher, objective) if m is not None]

    def on_fit_start(self, trainer: Trainer) -> None:
        objective = self._objective = trainer.objective
        eager = objective.forward
        compiled = torch.compile(eager, mode=self.mode, backend=self.backend) if self.compile else eager
        # quantizers set `capture` together for the Hessian estimate: watching one is enough, and the
        # per-step check costs the same for any number of layers
        watch = next((q for _, q in named_quantizers(objective.student) if q.backward_mode == "ewgs"), None)
        nhwc = self.channels_last
        if nhwc:
            _to_memory_format(self._models(objective), torch.channels_last)

        def forward(inputs: Any, labels: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
            if nhwc and isinstance(inputs, Tensor) and inputs.dim() == 4:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            if watch is not None and watch.capture:  # EWGS's Hessian pass: double backward, eager only
                return eager(inputs, labels)
            return compiled(inputs, labels)

        objective.forward = forward  # an instance attribute: nn.Module.__call__ finds it first

    def on_fit_end(self, trainer: Trainer) -> None:
        objective, self._objective = self._objective, None
        if objective is None:
            return
        vars(objective).pop("forward", None)  # back to the class's forward
        if self.channels_last:
            _to_memory_format(self._models(objective), torch.contiguous_format)


def fast_step_callbacks(cfg: TrainConfig) -> list[FastStep]:
    """The `FastStep` a `TrainConfig` asks for (``train.compile``, ``train.channels_last``), if any."""
    if not (cfg.compile or cfg.channels_last):
        return []
    return [FastStep(cfg.compile, cfg.compile_mode, cfg.compile_backend, cfg.channels_last)]

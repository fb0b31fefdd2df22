"""TrainConfig: optimiser, schedule and bookkeeping of one training run."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from qdistill.config import from_dict
from qdistill.errors import ConfigError
from qdistill.train.compile import COMPILE_MODES

__all__ = ["DIVERGE_WINDOW", "TrainConfig"]

DIVERGE_WINDOW = 10  # steps whose mean loss is the reference of the divergence check


@dataclass(frozen=True)
class TrainConfig:
    """Settings of the one-phase trainer (validated on construction).

    Attributes:
        epochs: passes over the training data.
        optimizer: ``adam`` or ``sgd``.
        lr / quant_lr: learning rate of weights and of quantizer parameters (None: same as lr).
            Quantizer parameters never get weight decay.
        warmup_epochs: linear warm-up before the cosine decay (per iteration).
        dropout: False sets every dropout layer of the student to p = 0: a student that starts as the
            teacher and is matched to the teacher's clean outputs otherwise learns to fit its own
            dropout noise (fine-tuned transformers carry p = 0.1), which swamps the quantization error.
        ewgs_every: re-estimate EWGS's delta from the Hessian every N epochs (0: never).
        hessian_batches / hessian_probes: cost of that estimate.
        amp: ``auto`` (bf16 autocast on CUDA), ``bf16`` or ``off``.
        max_steps: cap on steps per epoch (quick runs on a subset); None for full epochs.
        compile_quantizers: fuse quantizer kernels with torch.compile (about 9x faster quantizers
            after a one-off compile of tens of seconds on CPU; see `use_compiled_kernels`).
        compile: torch.compile the whole objective forward (student, teacher, loss, quantizers) into
            one graph for the fit (qdistill/train/compile.py); eager stays the reference.
        compile_mode / compile_backend: ``torch.compile``'s ``mode`` (one of `COMPILE_MODES`) and
            ``backend`` (``aot_eager``: no code generation, quick to check that a model compiles).
        channels_last: NHWC conv weights and image batches (faster convolutions on some hardware).
        checkpoint_every: also write ``last.pt`` every N steps inside an epoch, so a kill loses
            at most N steps (a checkpoint is always written at the end of each epoch). Honoured
            only with qdistill's `BatchLoader`, the one loader that can restart mid-epoch exactly.
        diverge_factor / diverge_min_loss: stop with `DivergedError` when a step's loss exceeds both
            ``diverge_factor`` times the mean loss of the run's first `DIVERGE_WINDOW` steps and the
            absolute floor ``diverge_min_loss`` (the floor keeps a near-zero starting KD loss from
            making ordinary noise look like divergence). ``diverge_factor: null`` turns the check
            off; non-finite losses and weights always stop the run.
        distributed: data parallel wrapper when run under ``torchrun`` / ``qdistill train --nproc``:
            ``ddp`` (DistributedDataParallel: every rank holds the whole student) or ``fsdp``
            (FSDP2: each rank holds 1/N of the student's weights, gradients and optimizer state;
            same losses and checkpoints, see docs/training.md). BatchNorm is synced under both.
        dist_timeout: seconds a collective may wait for the other processes before the run stops
            (a hung or dead peer ends every rank instead of blocking it).
        blockwise_steps: before end-to-end training, train each quantized block this many steps to
            reproduce the teacher block's output on the teacher's inputs (`qdistill.train.blockwise`;
            0: no block-wise phase). Language-model runs (``model.source: hf``) only.
        blockwise_batches: training batches whose block inputs the phase records and cycles over.
        blockwise_lr / blockwise_quant_lr: its learning rates of weights and quantizer parameters
            (None: ``lr`` and ``quant_lr``).
        gptq: in that phase, first round each block's quantized Linears by GPTQ
            (`qdistill.quant.gptq`) under the Hessian of the teacher block's inputs on the same
            batches: a far better start than round-to-nearest at 2-3 bits. With
            ``blockwise_steps: 0`` the phase only rounds. ``gptq_damp``: its dampening, a fraction of
            the Hessian's mean diagonal.
    """

    epochs: int = 10
    optimizer: str = "adam"
    lr: float = 1e-3
    quant_lr: float | None = None
    weight_decay: float = 0.0
    momentum: float = 0.9
    nesterov: bool = False
    warmup_epochs: float = 0.0
    dropout: bool = True
    ewgs_every: int = 1
    hessian_batches: int = 1
    hessian_probes: int = 2
    grad_clip: float | None = None
    amp: str = "auto"
    device: str = "auto"
    seed: int = 0
    max_steps: int | None = None
    checkpoint_every: int | None = None
    compile_quantizers: bool = False
    compile: bool = False
    compile_mode: str = "default"
    compile_backend: str = "inductor"
    channels_last: bool = False
    progress: bool = True
    tensorboard: bool = False
    diverge_factor: float | None = 1e3
    diverge_min_loss: float = 100.0
    distributed: str = "ddp"
    dist_timeout: float = 600.0
    blockwise_steps: int = 0
    blockwise_batches: int = 4
    blockwise_lr: float | None = None
    blockwise_quant_lr: float | None = None
    gptq: bool = False
    gptq_damp: float = 0.01

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, "train.epochs must be >= 1"),
            (self.optimizer in ("adam", "sgd"), f"train.optimizer: unknown {self.optimizer!r}; choose adam or sgd"),
            (self.lr > 0, "train.lr must be > 0"),
            (self.quant_lr is None or self.quant_lr > 0, "train.quant_lr must be > 0"),
            (self.weight_decay >= 0, "train.weight_decay must be >= 0"),
            (0 <= self.warmup_epochs < self.epochs, "train.warmup_epochs must be in [0, epochs)"),
            (self.ewgs_every >= 0, "train.ewgs_every must be >= 0"),
            (self.hessian_batches >= 1 and self.hessian_probes >= 1, "train.hessian_batches/probes must be >= 1"),
            (self.amp in ("auto", "bf16", "off"), f"train.amp: unknown {self.amp!r}; choose auto, bf16 or off"),
            (self.max_steps is None or self.max_steps >= 1, "train.max_steps must be >= 1"),
            (self.checkpoint_every is None or self.checkpoint_every >= 1, "train.checkpoint_every must be >= 1"),
            (self.diverge_factor is None or self.diverge_factor > 1, "train.diverge_factor must be > 1 (or null: off)"),
            (self.diverge_min_loss >= 0, "train.diverge_min_loss must be >= 0"),
            (
                self.compile_mode in COMPILE_MODES,
                f"train.compile_mode: unknown {self.compile_mode!r}; choose one of {', '.join(COMPILE_MODES)}",
            ),
            (
                self.distributed in ("ddp", "fsdp"),
                f"train.distributed: unknown {self.distributed!r}; choose ddp or fsdp",
            ),
            (self.dist_timeout > 0, "train.dist_timeout must be > 0 (seconds)"),
            (self.blockwise_steps >= 0, "train.blockwise_steps must be >= 0 (0: no block-wise phase)"),
            (self.blockwise_batches >= 1, "train.blockwise_batches must be >= 1"),
            (self.blockwise_lr is None or self.blockwise_lr > 0, "train.blockwise_lr must be > 0"),
            (self.blockwise_quant_lr is None or self.blockwise_quant_lr > 0, "train.blockwise_quant_lr must be > 0"),
            (self.gptq_damp > 0, "train.gptq_damp must be > 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> TrainConfig:
        return from_dict(cls, d, "train")

"""Quantizer base class: one small nn.Module per weight or activation tensor."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from qdistill.errors import ConfigError
from qdistill.quant.fake_quant import BACKWARDS, fake_quant, quant_level
from qdistill.quant.range_init import weight_range
from qdistill.registry import Registry

__all__ = ["QUANTIZERS", "Interval", "Quantizer"]

QUANTIZERS: Registry[type[Quantizer]] = Registry("quantizer")


@dataclass
class Interval:
    """What a quantizer hands to `fake_quant`: clip range, output map and gradient rule."""

    x: Tensor  # the (possibly transformed) input to clip
    lo: Tensor
    hi: Tensor
    step: Tensor  # output = (level - zero) * step
    zero: Tensor | float = 0.0
    range_rule: str = "full"


class Quantizer(nn.Module):
    """Fake-quantizes one tensor to ``2**bits`` levels.

    Subclasses implement ``init_from(x)`` (set ranges from a first tensor, e.g. a calibration
    batch) and ``interval(x)``. Activation quantizers decide at initialisation whether their input
    is signed: after a ReLU all values are >= 0 and an unsigned grid keeps every level useful.
    Signedness and initialisation are plain Python state fixed at calibration (saved in the state
    dict's extra state), so an initialised quantizer's forward has no data-dependent branch and
    traces with ``torch.export`` / ``torch.compile(fullgraph=True)``.

    Args:
        bits: 1..8.
        is_weight: weights are always signed; activations are signed only if calibration sees a
            negative value.
        channel_shape: broadcast shape of per-channel ranges, e.g. ``(C, 1, 1, 1)`` for a conv
            weight; ``()`` for one range per tensor.
        backward: Round's backward: ``ste``, ``ewgs`` or ``generic``.
        coef: initial EWGS delta or generic mu.
        weight_init: where a weight range starts (`qdistill.quant.range_init`): ``default`` (the
            method's rule) or, for methods that list it in ``weight_inits``, ``minmax`` / ``mse``
            (an asymmetric grid with an integer zero point per range).
    """

    default_backward = "ste"  # what QuantConfig.backward=None resolves to for this method
    weight_granularities: tuple[str, ...] = ("tensor", "channel", "group")  # weight ranges it defines
    weight_inits: tuple[str, ...] = ("default",)  # weight range initialisations it defines

    def __init__(
        self,
        bits: int,
        *,
        is_weight: bool,
        channel_shape: tuple[int, ...] = (),
        backward: str = "ste",
        coef: float = 1e-3,
        weight_init: str = "default",
    ):
        super().__init__()
        if weight_init not in self.weight_inits:
            raise ConfigError(
                f"quant.weight_init {weight_init!r}: {type(self).__name__} starts weights from {', '.join(self.weight_inits)}"
            )
        if not 1 <= int(bits) <= 8:
            raise ConfigError(f"bits must be in 1..8, got {bits}")
        if backward not in BACKWARDS:
            raise ConfigError(f"unknown backward {backward!r}; choose one of {BACKWARDS}")
        self.bits = int(bits)
        self.is_weight = is_weight
        self.channel_shape = tuple(channel_shape)
        self.channels = self.channel_shape[0] if self.channel_shape else 1
        self.backward_mode = backward
        self.weight_init = weight_init if is_weight else "default"
        self.register_buffer("coef", torch.tensor(float(coef)))
        self.signed: bool = is_weight
        self.initialized = False
        self.capture = False  # set by the EWGS Hessian estimator to keep the output for autograd
        self.captured: Tensor | None = None
        self.captured_scale = 1.0  # output units per unit of the normalised grid x_q, for the Hessian

    @property
    def keeps_scale(self) -> bool:
        """Whether quantized weights keep the scale of the float weights (False: BatchNorm
        statistics of a pretrained model no longer fit; see `calibrate`)."""
        return True

    @property
    def levels(self) -> int:
        return 2**self.bits

    @property
    def n(self) -> int:
        """Number of steps between the lowest and highest level."""
        return 2**self.bits - 1

    def param_shape(self) -> tuple[int, ...]:
        """Shape of a range parameter."""
        return self.channel_shape

    def reduce_dims(self, x: Tensor) -> tuple[int, ...]:
        return tuple(range(1, x.dim())) if self.channel_shape else tuple(range(x.dim()))

    @property
    def asymmetric(self) -> bool:
        """Whether the weight grid is min/max-style: ``[lo, hi]`` holding 0, an integer zero point."""
        return self.weight_init != "default"

    @torch.no_grad()
    def asymmetric_range(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(lo, hi)`` of the ``weight_init`` rule, one per range (`param_shape`)."""
        lo, hi = weight_range(x, self.weight_init, self.n, self.reduce_dims(x))
        return lo.view(self.param_shape()), hi.view(self.param_shape())

    @torch.no_grad()
    def init_from(self, x: Tensor) -> None:
        raise NotImplementedError

    def interval(self, x: Tensor) -> Interval:
        raise NotImplementedError

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set signedness and ranges from ``x``; later calls re-initialise (calibration)."""
        if not self.is_weight:
            self.signed = bool((x < 0).any())
        self.init_from(x.detach().float())
        self.initialized = True

    def reset(self) -> None:
        """Forget the calibration: the next forward initialises from its input again."""
        self.initialized = False

    def forward(self, x: Tensor) -> Tensor:
        if not self.initialized:  # calibration (eager); an initialised quantizer never branches here
            self.initialize(x)
        # fp32 math under autocast too (the same levels as eval and export); float64 stays float64
        x32 = x.to(torch.promote_types(x.dtype, torch.float32))
        iv = self.interval(x32)
        y = fake_quant(iv.x, iv.lo, iv.hi, iv.step, iv.zero, self.levels, self.backward_mode, self.coef, iv.range_rule)
        if self.capture and y.requires_grad:
            y.retain_grad()
            self.captured = y
            self.captured_scale = float((iv.step * self.n).detach().abs().mean())
        return y.to(x.dtype)

    @torch.no_grad()
    def integer_levels(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(k, step, zero)`` of this quantizer on ``x``: float32 tensors with ``k`` the integer
        levels 0..2^b-1 and ``(k - zero) * step`` equal to ``self(x)`` bit for bit (the same
        interval and the same `quant_level` as the forward). What `convert` and export store.
        """
        if not self.initialized:
            raise ConfigError(f"{type(self).__name__} is not calibrated: calibrate the model or run one forward first")
        iv = self.interval(x.float())
        zero = iv.zero if isinstance(iv.zero, Tensor) else torch.tensor(float(iv.zero))
        return quant_level(iv.x, iv.lo, iv.hi, self.n), iv.step.detach().float(), zero.detach().float()

    @torch.no_grad()
    def project(self, x: Tensor) -> Tensor:
        """Map ``x`` (e.g. a teacher feature) onto this quantizer's current grid, detached.

        This is SQuaT's projection: the target is a tensor the student can represent exactly.
        """
        if not self.initialized:
            raise RuntimeError("quantizer is not initialised: calibrate the model or run one forward first")
        iv = self.interval(x.float())
        return fake_quant(iv.x, iv.lo, iv.hi, iv.step, iv.zero, self.levels).detach().to(x.dtype)

    def get_extra_state(self) -> Tensor:
        """``[signed, initialized]`` as a bool tensor: state dicts stay tensors-only (safetensors,
        ``weights_only`` loading, code that clones every entry)."""
        return torch.tensor([self.signed, self.initialized])

    def set_extra_state(self, state: Tensor) -> None:
        self.signed, self.initialized = (bool(v) for v in state.tolist())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # type: ignore[override]
        # State dicts written before signedness became Python state carry two bool buffers.
        old = {k: bool(state_dict.pop(prefix + k)) for k in ("signed", "initialized") if prefix + k in state_dict}
        if old and prefix + "_extra_state" not in state_dict:
            merged = {"signed": self.signed, "initialized": self.initialized} | old
            state_dict[prefix + "_extra_state"] = torch.tensor([merged["signed"], merged["initialized"]])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        kind = "weight" if self.is_weight else "act"
        return f"{kind}, bits={self.bits}, signed={self.signed}, backward={self.backward_mode}"

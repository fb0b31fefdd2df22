"""QuantConfig: what to quantize, how, and with which backward."""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from qdistill.config import from_dict
from qdistill.errors import ConfigError
from qdistill.quant.base import QUANTIZERS
from qdistill.quant.fake_quant import BACKWARDS
from qdistill.quant.range_init import WEIGHT_INITS

__all__ = ["QuantConfig"]

_LAYER_KEYS = (
    "method",
    "weight_bits",
    "act_bits",
    "backward",
    "backward_coef",
    "per_channel",
    "group_size",
    "act_granularity",
    "weight_init",
)
ACT_GRANULARITIES = ("tensor", "token")


@dataclass(frozen=True)
class QuantConfig:
    """Validated quantization settings; checked on construction so bad values fail before training.

    Attributes:
        method: quantizer forward: ``pact``, ``lsq``, ``dorefa`` or ``ewgs``.
        weight_bits: 1..8.
        act_bits: 1..8, or None to keep activations full precision.
        backward: Round's backward (``ste``, ``ewgs``, ``generic``); None picks the method's
            ``default_backward`` (``ewgs`` for EWGS, ``ste`` otherwise).
        backward_coef: initial EWGS delta or generic mu.
        per_channel: one weight range per output channel.
        group_size: one weight range per output channel and group of this many inputs (along the
            input dimension; it must divide each quantized layer's input count). None: per
            tensor or per channel as ``per_channel`` says.
        weight_init: where weight ranges start: ``default`` (the method's rule, e.g. LSQ's
            2 mean|w| / sqrt(Qp)), ``minmax`` (an asymmetric grid with an integer zero point per
            range, ``[min(w, 0), max(w, 0)]``: round-to-nearest as LLM quantization does it) or
            ``mse`` (that range shrunk by the factor of least squared error); ``minmax`` and
            ``mse`` need a method that learns a weight range (``lsq``, ``ewgs``) and 2+ bits.
        act_granularity: ``tensor`` (one learned range, the method's rule) or ``token`` (a range
            per token, min/max over the last dimension computed on the fly: transformer
            activations; only for layers reading features on the last dimension).
        quantize_embeddings: also quantize ``nn.Embedding`` tables (weights only; off by default).
        keep_first / keep_last: leave the first conv and the classifier full precision (SQAKD).
        include: module-name globs quantized even when kept by keep_first/keep_last.
        exclude: module-name globs left full precision.
        overrides: module-name glob -> dict of the per-layer keys above (e.g. ``{"layer1.*": {"weight_bits": 4}}``).
        residual_bits: None keeps residual sums float, as the papers do; 2..8 (8 for deployment)
            also quantizes both inputs and the output of every residual sum with LSQ (integer zero
            points), so an exported model runs every layer in integer kernels and still computes
            exactly what was trained. Only for models whose blocks declare ``residual_quant_slots``.
    """

    method: str = "ewgs"
    weight_bits: int = 2
    act_bits: int | None = 2
    backward: str | None = None
    backward_coef: float = 1e-3
    per_channel: bool = False
    group_size: int | None = None
    act_granularity: str = "tensor"
    weight_init: str = "default"
    quantize_embeddings: bool = False
    keep_first: bool = True
    keep_last: bool = True
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    residual_bits: int | None = None
    version: int = 1

    def __post_init__(self) -> None:
        if self.method not in QUANTIZERS:
            raise ConfigError(f"quant.method: unknown {self.method!r}; choose one of {', '.join(QUANTIZERS.names())}")
        for key in ("weight_bits", "act_bits"):
            v = getattr(self, key)
            if v is None and key == "act_bits":
                continue
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 8:
                raise ConfigError(f"quant.{key}: must be an integer in 1..8, got {v!r}")
        for key in ("per_channel", "quantize_embeddings", "keep_first", "keep_last"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"quant.{key}: must be true or false, got {getattr(self, key)!r}")
        g = self.group_size
        if g is not None and (not isinstance(g, int) or isinstance(g, bool) or g < 1):
            raise ConfigError(f"quant.group_size: must be None or a positive integer, got {g!r}")
        if self.act_granularity not in ACT_GRANULARITIES:
            raise ConfigError(
                f"quant.act_granularity: unknown {self.act_granularity!r}; choose one of {', '.join(ACT_GRANULARITIES)}"
            )
        if self.weight_init not in WEIGHT_INITS:
            raise ConfigError(
                f"quant.weight_init: unknown {self.weight_init!r}; choose one of {', '.join(WEIGHT_INITS)}"
            )
        inits = QUANTIZERS.get(self.method).weight_inits
        if self.weight_init not in inits:
            raise ConfigError(
                f"quant.weight_init {self.weight_init!r}: method {self.method!r} starts weights from {', '.join(inits)}"
            )
        if self.weight_init != "default" and self.weight_bits < 2:
            raise ConfigError(f"quant.weight_init {self.weight_init!r} needs weight_bits >= 2 (a grid with 0 on it)")
        r = self.residual_bits
        if r is not None and (not isinstance(r, int) or isinstance(r, bool) or not 2 <= r <= 8):
            raise ConfigError(f"quant.residual_bits: must be None or an integer in 2..8, got {r!r}")
        if self.backward is not None and self.backward not in BACKWARDS:
            raise ConfigError(f"quant.backward: unknown {self.backward!r}; choose one of {', '.join(BACKWARDS)}")
        object.__setattr__(self, "include", tuple(self.include))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        for pattern, over in self.overrides.items():
            bad = set(over) - set(_LAYER_KEYS)
            if bad:
                raise ConfigError(
                    f"quant.overrides[{pattern!r}]: unknown key {min(bad)!r}; allowed: {', '.join(_LAYER_KEYS)}"
                )
            replace(self, overrides={}, **over)  # validates the values

    @property
    def resolved_backward(self) -> str:
        return self.backward or QUANTIZERS.get(self.method).default_backward

    def for_layer(self, name: str) -> QuantConfig:
        """This config with every matching override applied (later patterns win)."""
        cfg = self
        for pattern, over in self.overrides.items():
            if fnmatch.fnmatchcase(name, pattern):
                cfg = replace(cfg, **over)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["include"], d["exclude"] = list(self.include), list(self.exclude)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> QuantConfig:
        return from_dict(cls, d, "quant")

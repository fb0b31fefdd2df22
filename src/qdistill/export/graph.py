"""Translate a (fake-)quantized PyTorch model into an ONNX graph with QDQ nodes.

The model is traced with torch.fx (quantized layers stay opaque), BatchNorm is folded into the
conv or linear before it, and every quantizer becomes the integer ops it stands for
(`qdistill.export.intgrid`):

* weights: int8 per-output-channel initialisers (BN's per-channel gain goes into the scale, so
  folding never moves a level) behind a DequantizeLinear;
* activations: ``QuantizeLinear -> Clip (uint8, only when b < 8) -> DequantizeLinear``.

This is the layout ONNX Runtime turns into QLinearConv / QGemm: ``DQ -> Conv [-> Relu] -> Q``
fuses into one integer kernel whenever a conv's only consumer is the next layer's quantizer.
Tensors the trained model keeps in float (the residual stream) stay float, so the exported model
computes what the trained one does up to float rounding.
"""

from __future__ import annotations

import builtins
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from qdistill.errors import ConfigError, ExportError
from qdistill.export.intgrid import act_grid, weight_ints
from qdistill.quant.base import Quantizer
from qdistill.quant.intform import IntConv, IntLinear, IntModule
from qdistill.quant.modules import QuantModule

__all__ = ["OnnxBuild", "build_onnx", "live_nodes"]

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)
_I64_MAX = 2**63 - 1


class UnsupportedOp(ExportError):
    """An op this builder has no translation for: `export_onnx` then takes the torch.onnx route."""


class _Tracer(fx.Tracer):
    """Keeps quantized layers opaque: their forwards branch on quantizer state."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (QuantModule, Quantizer)) or super().is_leaf_module(m, qualname)


class _Batch:
    """Marker for ``x.size(0)``: the only non-constant shape an exported graph needs."""


@dataclass
class OnnxBuild:
    """The ONNX model plus what the export did per layer (reported in the model card)."""

    model: Any  # onnx.ModelProto
    layers: list[dict[str, Any]] = field(default_factory=list)


class _Builder:
    def __init__(self, opset: int, snap_bias: bool) -> None:
        from onnx import helper, numpy_helper

        self.h, self.nh = helper, numpy_helper
        self.opset = opset
        self.snap_bias = snap_bias
        self.bias_sites: dict[str, _BiasSite] = {}  # bias initialiser name -> where it comes from
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.count = 0
        self.act_cache: dict[tuple[str, int], str] = {}
        self.act_source: dict[str, int] = {}  # output of an activation quantizer -> id of that quantizer
        self.levels: dict[
            str, tuple[str, list[str]]
        ] = {}  # dequantized tensor -> (its uint8 levels, DQ scale and zero)
        self.shapes: dict[str, tuple[int, ...]] = {}  # tensor -> its shape on the example batch (dim 0 is dynamic)
        self.layers: list[dict[str, Any]] = []

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def const(self, value: Any, hint: str, dtype: Any = np.float32) -> str:
        name = self.name(hint)
        self.inits.append(self.nh.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, **attrs: Any) -> str:
        return self.multi_op(op_type, inputs, 1, hint, **attrs)[0]

    def multi_op(
        self, op_type: str, inputs: list[str], outputs: int, hint: str | None = None, **attrs: Any
    ) -> list[str]:
        name = self.name(hint or op_type.lower())
        outs = [name] if outputs == 1 else [f"{name}.{i}" for i in range(outputs)]
        self.nodes.append(self.h.make_node(op_type, inputs, outs, name=name, **attrs))
        return outs

    # -- quantizers -----------------------------------------------------------------------------
    def act(self, x: str, q: Quantizer, hint: str) -> str:
        """``x`` through activation quantizer ``q`` as Q -> [Clip] -> DQ (cached per tensor)."""
        key = (x, id(q))
        if key in self.act_cache:
            return self.act_cache[key]
        if self.act_source.get(x) == id(q):  # already on q's grid (a shared quantizer): idempotent
            return x
        g = act_grid(q)
        if g.shift is not None:
            x = self.op("Add", [x, self.const(g.shift, f"{hint}.shift")], f"{hint}.shifted")
        zq = self.const(g.q_zero, f"{hint}.in_zero", np.uint8)
        k = self.op("QuantizeLinear", [x, self.const(g.delta, f"{hint}.in_scale"), zq], f"{hint}.q")
        if g.n < 255:
            lo, hi = self.const(0, f"{hint}.min", np.uint8), self.const(g.n, f"{hint}.max", np.uint8)
            k = self.op("Clip", [k, lo, hi], f"{hint}.clip")
        dq_args = [self.const(g.step, f"{hint}.scale"), self.const(g.dq_zero, f"{hint}.zero", np.uint8)]
        y = self.op("DequantizeLinear", [k, *dq_args], f"{hint}.dq")
        if g.half:
            y = self.op("Add", [y, self.const(g.step / 2, f"{hint}.half")], f"{hint}.dqh")
        else:
            self.levels[y] = (k, dq_args)
        self.act_cache[key] = y
        self.act_source[y] = id(q)
        return y

    def on_levels(self, x: str, op_type: str, inputs: list[str], **attrs: Any) -> str:
        """``op_type`` applied to ``x``; on its integer levels (then dequantized) when ``x`` is a
        dequantized activation, so that slicing and zero padding keep the tensor quantized (0.0 is
        the zero point's level) and the sums it enters still fuse into integer kernels."""
        if x not in self.levels:
            return self.op(op_type, [x, *inputs], **attrs)
        k, dq_args = self.levels[x]
        if op_type == "Pad":  # pad with the zero point's level, which dequantizes to 0.0
            inputs = [inputs[0], dq_args[1]]
        kk = self.op(op_type, [k, *inputs], **attrs)
        y = self.op("DequantizeLinear", [kk, *dq_args])
        self.levels[y] = (kk, dq_args)
        self.act_source[y] = self.act_source[x]
        return y

    def weight(self, form: nn.Module, bn: nn.Module | None, hint: str, in_step: float | None) -> _Weight:
        """Weight (int8 + per-channel scale when it fits, else exact float) and folded bias.

        ``form`` is a float layer or a quantized layer's integer form (`IntModule`); ``in_step``
        is the dequantize scale of the layer's input (None for a float input).
        """
        quantized = isinstance(form, IntModule)
        w = (form.dequantized_weight() if quantized else form.weight).detach().float()
        out_ch = w.shape[0]
        bias = form.bias.detach().float() if form.bias is not None else torch.zeros(out_ch)
        gain = torch.ones(out_ch)
        if bn is not None:
            gain = (bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)).float()
            bias = bn.bias.detach().float() + gain * (bias - bn.running_mean.float())
        shape = (-1,) + (1,) * (w.dim() - 1)
        info: dict[str, Any] = {"bn_folded": bn is not None}
        iw = weight_ints(form) if quantized else None
        if quantized:
            info.update(weight_bits=form.bits)
        if iw is None:  # a float layer, or per-group scales (one QDQ scale per channel): exact float
            info.update(weight="float32" if not quantized else "float32 (per-group scales)")
            return _Weight(self.const((w * gain.view(shape)).numpy(), f"{hint}.weight"), bias, info)
        info.update(weight_int_range=[int(iw.ints.min()), int(iw.ints.max())])
        if not iw.fits_int8:  # 8-bit grids without a zero need 9-bit integers: exact float instead
            info.update(weight="float32 (levels need 9 bits)")
            real = iw.ints.float() * (iw.scale * gain).view(shape)
            return _Weight(self.const(real.numpy(), f"{hint}.weight"), bias, info)
        # Spread each channel's levels over the whole int8 range (ints * m, scale / m): the same
        # real weights, but the runtime's int32 bias (units of input scale x weight scale) gets
        # m times finer, so fewer outputs land on the other side of a rounding boundary.
        peak = iw.ints.abs().amax(dim=tuple(range(1, w.dim()))).clamp_min(1)
        m = torch.div(127, peak, rounding_mode="floor")
        sign = torch.where(gain < 0, -1, 1)
        scale = iw.scale * gain.abs() / m
        dead = scale == 0  # a zero BN gain: output is the bias alone
        ints = torch.where(dead.view(shape), 0, iw.ints * (sign * m).view(shape))
        scale = torch.where(dead, torch.ones_like(scale), scale)
        info.update(weight="int8 per-channel")
        unit = (
            None if in_step is None else np.float32(in_step) * scale.numpy().astype(np.float32)
        )  # as the runtime computes it
        q = self.const(ints.numpy(), f"{hint}.weight_int8", np.int8)
        zero = self.const(np.zeros(out_ch), f"{hint}.weight_zero", np.int8)
        dq = self.op(
            "DequantizeLinear",
            [q, self.const(scale.numpy(), f"{hint}.weight_scale"), zero],
            f"{hint}.weight_dq",
            axis=0,
        )
        return _Weight(dq, bias, info, q, unit)

    def finish(self) -> None:
        """Fold input shifts into the bias before them, then write (and snap) integer biases."""
        self._fold_shifts()
        for name, site in self.bias_sites.items():
            bias = site.bias + site.offset
            if self.snap_bias and site.unit is not None:
                bias = _snap(site, bias)
            self._set_const(name, bias.numpy())

    def _fold_shifts(self) -> None:
        """``Conv(b) [-> Relu] -> Add(c) -> QuantizeLinear`` becomes ``Conv(b + c) [-> Relu] -> Q``.

        A learned lower bound off the grid (EWGS) needs the shift; left as an Add it stops the
        runtime from fusing the conv into an integer kernel. Moving ``c`` into the bias is exact
        without a ReLU, and with one when ``c < step / 2`` (both forms then give level 0 to every
        negative input, the uint8 Q saturating below 0).
        """
        producer = {o: n for n in self.nodes for o in n.output}
        users: dict[str, list[Any]] = {}
        for n in self.nodes:
            for i in n.input:
                users.setdefault(i, []).append(n)
        values = {t.name: t for t in self.inits}
        for add in [n for n in self.nodes if n.op_type == "Add" and ".shifted_" in n.name]:
            x, c_name = add.input
            q = users.get(add.output[0], [])
            src = producer.get(x)
            relu = src if src is not None and src.op_type == "Relu" else None
            conv = producer.get(relu.input[0]) if relu is not None else src
            if (
                len(q) != 1
                or q[0].op_type != "QuantizeLinear"
                or conv is None
                or conv.op_type not in ("Conv", "Gemm")
                or len(conv.input) < 3
                or conv.input[2] not in self.bias_sites
                or len(users[conv.output[0]]) != 1
                or (relu is not None and len(users[relu.output[0]]) != 1)
            ):
                continue
            c = float(self.nh.to_array(values[c_name]))
            if relu is not None and not c < float(self.nh.to_array(values[q[0].input[1]])) / 2:
                continue
            self.bias_sites[conv.input[2]].offset += c
            q[0].input[0] = x
            self.nodes.remove(add)

    def prune(self, output: str) -> None:
        """Drop nodes and initialisers ``output`` does not depend on (e.g. a dequantize that a
        slice on integer levels made redundant)."""
        self.nodes = live_nodes(self.nodes, [output])
        used = {i for n in self.nodes for i in n.input}
        self.inits = [t for t in self.inits if t.name in used]

    def _set_const(self, name: str, value: np.ndarray) -> None:
        i = next(i for i, t in enumerate(self.inits) if t.name == name)
        self.inits[i] = self.nh.from_array(np.asarray(value, dtype=np.float32), name)


def live_nodes(nodes: list[Any], outputs: list[str]) -> list[Any]:
    """The nodes that ``outputs`` depend on, in their order."""
    producer = {o: n for n in nodes for o in n.output}
    needed: set[str] = set()
    stack = list(outputs)
    while stack:
        t = stack.pop()
        if t in needed:
            continue
        needed.add(t)
        if t in producer:
            stack.extend(producer[t].input)
    return [n for n in nodes if any(o in needed for o in n.output)]


@dataclass
class _BiasSite:
    """An integer layer's folded bias, where it lives in the model, and the runtime's int32 unit."""

    layer: nn.Module
    bn: nn.Module | None
    bias: Tensor
    unit: np.ndarray | None
    info: dict[str, Any]
    offset: float = 0.0  # an input shift of the next quantizer, folded in


@torch.no_grad()
def _snap(site: _BiasSite, bias: Tensor) -> Tensor:
    """Move ``bias`` onto the integer runtime's int32 grid, and the model's own bias with it.

    An integer kernel adds the bias as ``round(bias / unit)`` int32 units. That moves each
    channel by up to half a unit (about 1e-3 of an output level), which is enough to flip
    roundings that then cascade through a low-bit network. Moving the model's BatchNorm shift (or
    bias) by the same amount makes the PyTorch model and the runtime compute the same sums.
    """
    unit = torch.from_numpy(site.unit)
    snapped = torch.round(bias / unit) * unit
    move = snapped - bias
    target = site.bn.bias if site.bn is not None else site.layer.bias
    if target is None:  # no bias and no BatchNorm: only a folded shift, which stays as it is
        return bias
    target.add_(move.to(target.dtype))
    site.info["bias_shift_levels"] = float((move.abs() / unit).max())
    return snapped.float()


@dataclass
class _Weight:
    name: str  # float weight tensor (initialiser or DequantizeLinear output)
    bias: Tensor
    info: dict[str, Any]
    int8: str | None = None  # int8 initialiser when the levels fit
    unit: np.ndarray | None = None  # int32 bias unit (input scale x weight scale) of an integer layer


class _Converter:
    """Walks the fx graph once, emitting ONNX nodes in order."""

    def __init__(self, model: nn.Module, gm: fx.GraphModule, example: Tensor, opset: int, snap_bias: bool) -> None:
        self.model, self.gm, self.example = model, gm, example
        self.b = _Builder(opset, snap_bias)
        self.env: dict[fx.Node, Any] = {}
        self.modules = dict(gm.named_modules())
        self.ints = {name: _int_form(name, m) for name, m in self.modules.items() if isinstance(m, QuantModule)}
        self.folded: dict[fx.Node, nn.Module] = {}  # conv/linear node -> its BatchNorm
        self.bn_skip: set[fx.Node] = set()
        self._plan_folds()

    def _plan_folds(self) -> None:
        for node in self.gm.graph.nodes:
            if node.op != "call_module" or not isinstance(self.modules[node.target], _BN):
                continue
            src = node.args[0]
            if (
                isinstance(src, fx.Node)
                and src.op == "call_module"
                and len(src.users) == 1
                and self._kind(src.target) is not None
            ):
                self.folded[src] = self.modules[node.target]
                self.bn_skip.add(node)

    def run(self) -> OnnxBuild:
        h = self.b.h
        from onnx import TensorProto

        outputs = []
        ShapeProp(self.gm).propagate(self.example)
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                self.env[node] = "input"
            elif node.op == "output":
                outputs.append(self.env[node.args[0]])
            elif node in self.bn_skip:
                self.env[node] = self.env[node.args[0]]
            else:
                self.env[node] = getattr(self, f"_{node.op}")(node)
            meta = node.meta.get("tensor_meta")
            if isinstance(self.env.get(node), str) and hasattr(meta, "shape"):
                self.b.shapes.setdefault(self.env[node], tuple(meta.shape))
        if len(outputs) != 1 or not isinstance(outputs[0], str):
            raise ExportError("export needs a model that returns one tensor")
        self.b.finish()
        self.b.nodes.append(h.make_node("Identity", [outputs[0]], ["logits"], name="logits"))
        self.b.prune("logits")
        x = h.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *self.example.shape[1:]])
        y = h.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", None])
        graph = h.make_graph(self.b.nodes, "qdistill", [x], [y], self.b.inits)
        model = h.make_model(graph, opset_imports=[h.make_opsetid("", self.b.opset)], producer_name="qdistill")
        return OnnxBuild(model, self.b.layers)

    def _arg(self, a: Any) -> Any:
        if isinstance(a, fx.Node):
            return self.env[a]
        if isinstance(a, (list, tuple)):
            return type(a)(self._arg(v) for v in a)
        return a

    # -- modules ----------------------------------------------------------------------------------
    def _call_module(self, node: fx.Node) -> Any:
        m = self.modules[node.target]
        x = self._arg(node.args[0])
        hint = str(node.target)
        if self._kind(node.target) is not None:
            return self._layer(node, m, x, hint)
        if isinstance(m, _BN):
            return self._batchnorm(m, x, hint)
        if isinstance(m, Quantizer):  # a quantizer of its own, e.g. on a residual sum
            return self.b.act(x, m, hint)
        simple = _MODULES.get(type(m))
        if simple is None:
            raise UnsupportedOp(f"export: unsupported layer {hint} ({type(m).__name__})")
        return simple(self.b, m, x, hint)

    def _layer(self, node: fx.Node, m: nn.Module, x: str, hint: str) -> str:
        aq = getattr(m, "act_quant", None)
        in_step = None
        if aq is not None:
            x = self.b.act(x, aq, f"{hint}.act")
            in_step = act_grid(aq).step
        form = self.ints.get(node.target, m)
        w = self.b.weight(form, self.folded.get(node), hint, in_step)
        info = dict(w.info, name=hint, type=type(m).__name__, act_bits=aq.bits if aq is not None else None)
        if isinstance(m, QuantModule):
            info["method"] = type(m.weight_quant).__name__.removesuffix("Quantizer").lower()
        conv = self._kind(node.target) == "conv"
        attrs: dict[str, Any] = {}
        if conv:
            if form.padding_mode != "zeros" or isinstance(form.padding, str):
                raise ExportError(
                    f"export: {hint} uses padding {form.padding!r}/{form.padding_mode}; only numeric zero padding is supported"
                )
            ph, pw = form.padding
            attrs = {
                "kernel_shape": list(form.kernel_size),
                "strides": list(form.stride),
                "pads": [ph, pw, ph, pw],
                "dilations": list(form.dilation),
                "group": form.groups,
            }
        info["kernel"] = "QDQ" if w.int8 is not None or aq is not None else "float"
        self.b.layers.append(info)
        bias = self.b.const(w.bias.numpy(), f"{hint}.bias")
        if w.unit is not None or w.int8 is not None:
            self.b.bias_sites[bias] = _BiasSite(m, self.folded.get(node), w.bias, w.unit, info)
        if not conv:
            return self.b.op("Gemm", [x, w.name, bias], hint, transB=1)
        return self.b.op("Conv", [x, w.name, bias], hint, **attrs)

    def _kind(self, target: str) -> str | None:
        """``"conv"`` (2-D) or ``"linear"`` for the layers that translate, by their integer form
        when quantized (so a registered layer type exports through its ``to_int``)."""
        form = self.ints.get(target, self.modules[target])
        if isinstance(form, nn.Conv2d) or (isinstance(form, IntConv) and form.dims == 2):
            return "conv"
        return "linear" if isinstance(form, (nn.Linear, IntLinear)) else None

    def _batchnorm(self, m: nn.Module, x: str, hint: str) -> str:
        def c(t, s):
            return self.b.const(t.detach().float().numpy(), f"{hint}.{s}")

        return self.b.op(
            "BatchNormalization",
            [x, c(m.weight, "w"), c(m.bias, "b"), c(m.running_mean, "m"), c(m.running_var, "v")],
            hint,
            epsilon=float(m.eps),
        )

    # -- functions and methods ------------------------------------------------------------------
    def _call_function(self, node: fx.Node) -> Any:
        args, kwargs = self._arg(node.args), self._arg(node.kwargs)
        if node.target is builtins.getattr and args[1] == "shape":  # static, but the batch stays dynamic
            return (_Batch(), *self.b.shapes[args[0]][1:])
        if not _holds_tensor((args, kwargs)):  # shape arithmetic (c // groups): fold it now
            return node.target(*args, **kwargs)
        fn = _FUNCTIONS.get(node.target)
        if fn is None:
            raise UnsupportedOp(
                f"export: unsupported function {getattr(node.target, '__name__', node.target)} at {node.name}"
            )
        return fn(self.b, *args, **kwargs)

    def _call_method(self, node: fx.Node) -> Any:
        args = self._arg(node.args)
        if node.target == "size" and args[1:] in ((0,), ()):
            return _Batch()
        fn = _METHODS.get(node.target)
        if fn is None:
            raise UnsupportedOp(f"export: unsupported tensor method .{node.target}() at {node.name}")
        return fn(self.b, *args, **self._arg(node.kwargs))

    def _get_attr(self, node: fx.Node) -> str:
        value = operator.attrgetter(node.target)(self.gm)
        return self.b.const(value.detach().float().numpy(), node.target)


def _int_form(name: str, m: QuantModule) -> nn.Module:
    if not hasattr(m, "to_int"):
        raise ExportError(
            f"export: {name} ({type(m).__name__}) has no to_int(): its layer type does not implement the integer form"
        )
    try:
        return m.to_int()
    except ConfigError as e:
        raise ExportError(f"export: {name}: {e}") from None


def _binary(op_type: str) -> Callable[..., str]:
    def emit(b: _Builder, x: Any, y: Any, **_: Any) -> str:
        x = x if isinstance(x, str) else b.const(float(x), "scalar")
        y = y if isinstance(y, str) else b.const(float(y), "scalar")
        return b.op(op_type, [x, y])

    return emit


def _holds_tensor(value: Any) -> bool:
    """Whether ``value`` (nested arguments) refers to a graph tensor or the dynamic batch size."""
    if isinstance(value, (str, _Batch)):
        return True
    if isinstance(value, (list, tuple)):
        return any(_holds_tensor(v) for v in value)
    if isinstance(value, dict):
        return any(_holds_tensor(v) for v in value.values())
    return False


def _flatten(b: _Builder, x: str, start_dim: int = 1, end_dim: int = -1) -> str:
    if start_dim != 1 or end_dim != -1:
        raise ExportError("export: only flatten(x, 1) is supported")
    return b.op("Flatten", [x], axis=1)


def _reshape(b: _Builder, x: str, *shape: Any) -> str:
    """``view`` / ``reshape`` to the batch size followed by static sizes (or -1)."""
    shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (list, tuple)) else shape
    if len(shape) == 2 and isinstance(shape[0], _Batch) and shape[1] == -1:
        return b.op("Flatten", [x], axis=1)
    if not shape or not isinstance(shape[0], _Batch) or not all(isinstance(v, int) for v in shape[1:]):
        raise ExportError("export: only reshapes to (batch, static sizes...) are supported, e.g. x.view(x.size(0), -1)")
    target = b.const(np.array([0, *shape[1:]]), "shape", np.int64)  # 0: keep the input's batch size
    return b.on_levels(x, "Reshape", [target])


def _transpose(b: _Builder, x: str, dim0: int, dim1: int) -> str:
    perm = list(range(len(b.shapes[x])))
    perm[dim0], perm[dim1] = perm[dim1], perm[dim0]
    return b.on_levels(x, "Transpose", [], perm=perm)


def _chunk(b: _Builder, x: str, chunks: int, dim: int = 0) -> tuple[str, ...]:
    """``torch.chunk`` as one Split (chunks of ``ceil(size / chunks)``, the last one smaller)."""
    size = b.shapes[x][dim]
    each = math.ceil(size / chunks)
    sizes = [each] * (size // each) + ([size % each] if size % each else [])
    return tuple(b.multi_op("Split", [x, b.const(np.array(sizes), "split", np.int64)], len(sizes), axis=dim))


def _getitem(b: _Builder, x: Any, idx: Any) -> Any:
    if isinstance(x, tuple):  # an element of x.shape or of a chunk
        return x[idx]
    if not isinstance(x, str):
        raise ExportError("export: indexing is only supported on tensors and tuples")
    idx = idx if isinstance(idx, tuple) else (idx,)
    starts, ends, axes, steps = [], [], [], []
    for axis, s in enumerate(idx):
        if not isinstance(s, slice):
            raise ExportError("export: only slicing (x[:, :, ::2]) is supported")
        if s == slice(None):
            continue
        starts.append(s.start or 0)
        ends.append(_I64_MAX if s.stop is None else s.stop)
        axes.append(axis)
        steps.append(s.step or 1)
    if not axes:
        return x

    def c(v, n):
        return b.const(np.array(v), n, np.int64)

    return b.on_levels(x, "Slice", [c(starts, "starts"), c(ends, "ends"), c(axes, "axes"), c(steps, "steps")])


def _pad(b: _Builder, x: str, pad: Any, mode: str = "constant", value: float | None = None) -> str:
    if mode != "constant":
        raise ExportError(f"export: F.pad mode {mode!r} is not supported")
    pairs = [(pad[i], pad[i + 1]) for i in range(0, len(pad), 2)]  # last dim first
    rank = 4
    begin, end = [0] * rank, [0] * rank
    for j, (lo, hi) in enumerate(pairs):
        begin[rank - 1 - j], end[rank - 1 - j] = lo, hi
    pads = b.const(np.array(begin + end), "pads", np.int64)
    if value:
        return b.op("Pad", [x, pads, b.const(float(value), "pad_value")], mode="constant")
    return b.on_levels(x, "Pad", [pads, b.const(0.0, "pad_value")], mode="constant")


def _cat(b: _Builder, tensors: Any, dim: int = 0) -> str:
    return b.op("Concat", list(tensors), axis=dim)


def _adaptive_avg(b: _Builder, x: str, output_size: Any) -> str:
    """Global pool for size 1; an AveragePool with equal windows where the input divides evenly."""
    if output_size in (1, (1, 1), [1, 1]):
        return b.op("GlobalAveragePool", [x])
    (h, w), (oh, ow) = b.shapes[x][2:], _pair(output_size)
    if h % oh or w % ow:
        raise ExportError(
            f"export: adaptive average pool from {h}x{w} to {oh}x{ow} needs unequal windows (not supported)"
        )
    if (h, w) == (oh, ow):
        return x
    k = [h // oh, w // ow]
    return b.op("AveragePool", [x], kernel_shape=k, strides=k)


def _mean(b: _Builder, x: str, dim: Any = None, keepdim: bool = False) -> str:
    axes = b.const(np.array(list(dim) if isinstance(dim, (list, tuple)) else [dim]), "axes", np.int64)
    return b.op("ReduceMean", [x, axes], keepdims=int(keepdim))


def _pool(op_type: str) -> Callable[..., str]:
    def emit(b: _Builder, m: nn.Module, x: str, hint: str) -> str:
        k = _pair(m.kernel_size)
        s = _pair(m.stride if m.stride is not None else m.kernel_size)
        p = _pair(m.padding)
        if getattr(m, "dilation", 1) not in (1, (1, 1)):
            raise ExportError(f"export: dilated pooling at {hint} is not supported")
        kw: dict[str, Any] = dict(
            kernel_shape=list(k), strides=list(s), pads=[p[0], p[1], p[0], p[1]], ceil_mode=int(m.ceil_mode)
        )
        if op_type == "AveragePool":
            kw["count_include_pad"] = int(m.count_include_pad)
        return b.op(op_type, [x], hint, **kw)

    return emit


def _pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _clip(lo: float, hi: float) -> Callable[..., str]:
    def emit(b: _Builder, m: nn.Module, x: str, hint: str) -> str:
        return b.op("Clip", [x, b.const(lo, f"{hint}.min"), b.const(hi, f"{hint}.max")], hint)

    return emit


_MODULES: dict[type, Callable[..., str]] = {
    nn.ReLU: lambda b, m, x, hint: b.op("Relu", [x], hint),
    nn.ReLU6: _clip(0.0, 6.0),
    nn.Identity: lambda b, m, x, hint: x,
    nn.Dropout: lambda b, m, x, hint: x,
    nn.Flatten: lambda b, m, x, hint: _flatten(b, x, m.start_dim, m.end_dim),
    nn.AdaptiveAvgPool2d: lambda b, m, x, hint: _adaptive_avg(b, x, m.output_size),
    nn.MaxPool2d: _pool("MaxPool"),
    nn.AvgPool2d: _pool("AveragePool"),
}
_FUNCTIONS: dict[Any, Callable[..., str]] = {
    operator.add: _binary("Add"),
    operator.iadd: _binary("Add"),
    torch.add: _binary("Add"),
    operator.mul: _binary("Mul"),
    torch.mul: _binary("Mul"),
    operator.getitem: _getitem,
    torch.flatten: _flatten,
    torch.cat: _cat,
    torch.relu: lambda b, x, **_: b.op("Relu", [x]),
    F.relu: lambda b, x, inplace=False: b.op("Relu", [x]),
    F.pad: _pad,
    F.adaptive_avg_pool2d: _adaptive_avg,
    torch.mean: _mean,
    torch.transpose: _transpose,
    torch.chunk: _chunk,
}
_METHODS: dict[str, Callable[..., str]] = {
    "relu": lambda b, x: b.op("Relu", [x]),
    "flatten": _flatten,
    "view": _reshape,
    "reshape": _reshape,
    "mean": _mean,
    "transpose": _transpose,
    "chunk": _chunk,
}


@torch.no_grad()
def build_onnx(model: nn.Module, example: Tensor, opset: int = 17, snap_bias: bool = False) -> OnnxBuild:
    """Trace ``model`` (eval mode) and return its QDQ ONNX graph; raises ExportError on unsupported ops.

    ``snap_bias`` moves ``model``'s biases onto the integer runtime's int32 grid (in place: pass
    a copy) so that the graph and the model compute the same integer sums.
    """
    model.eval()
    try:
        graph = _Tracer().trace(model)
    except Exception as e:  # fx raises many types for untraceable code
        raise ExportError(f"export: cannot trace {type(model).__name__} with torch.fx: {e}") from None
    gm = fx.GraphModule(model, graph)
    return _Converter(model, gm, example, opset, snap_bias).run()

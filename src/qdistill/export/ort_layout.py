"""An ONNX Runtime CPU build of an exported model with its residual stream kept channels-last.

ONNX Runtime runs its integer convs channels-last (NHWC) and wraps each one in transposes back to
NCHW; it does not cancel them across the residual sums (`QLinearAdd`) in between, and in a
ResNet-20 those transposes take about a quarter of the INT8 time. `ort_optimized` lets the
runtime fuse the graph (its QDQ fusions and NHWC convs, without the CPU-specific NCHWc blocking,
so the file stays portable across x86 CPUs), then moves every layout-free op between two
channels-last convs (sums, (de)quantizers, ReLU, slicing, zero padding) to channels-last so the
transposes pair up and disappear. The result uses ONNX Runtime's own operators (com.microsoft):
it is for ONNX Runtime only; the QDQ file stays the portable artefact.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qdistill.export.graph import live_nodes

__all__ = ["channels_last_stream", "ort_optimized"]

TO_NHWC, TO_NCHW = [0, 2, 3, 1], [0, 3, 1, 2]
_NCHW_TO_NHWC_AXIS = {0: 0, 1: 3, 2: 1, 3: 2}
# op -> indices of its data inputs (all other inputs are per-tensor constants)
_LAYOUT_FREE = {
    "QLinearAdd": (0, 3),
    "DequantizeLinear": (0,),
    "QuantizeLinear": (0,),
    "Relu": (0,),
    "Clip": (0,),
    "Add": (0, 1),
}


def ort_optimized(onnx_bytes: bytes, path: str) -> Any:
    """Let ONNX Runtime optimise ``onnx_bytes`` (saved to ``path``) and return it channels-last."""
    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = path
    so.log_severity_level = 3
    ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"], disabled_optimizers=["NchwcTransformer"])
    return channels_last_stream(onnx.load(path))


def _perm(node: Any) -> list[int] | None:
    from onnx import helper

    return next((list(helper.get_attribute_value(a)) for a in node.attribute if a.name == "perm"), None)


def channels_last_stream(model: Any) -> Any:
    """Rewrite ``model`` (ONNX Runtime-optimised, topologically sorted) so that NCHW -> NHWC
    transposes of tensors already available channels-last disappear; see the module docstring."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    nhwc: dict[str, str] = {}  # NCHW tensor -> the same values channels-last
    rename: dict[str, str] = {}
    nodes: list[Any] = []

    def const(value: np.ndarray, name: str) -> str:
        graph.initializer.append(numpy_helper.from_array(value, name))
        return name

    def scalar(name: str) -> bool:
        return name == "" or (name in inits and numpy_helper.to_array(inits[name]).size == 1)

    for node in graph.node:
        node.input[:] = [rename.get(i, i) for i in node.input]
        if node.op_type == "Transpose" and _perm(node) == TO_NCHW:
            nhwc[node.output[0]] = node.input[0]
        elif node.op_type == "Transpose" and _perm(node) == TO_NHWC:
            if node.input[0] in nhwc:
                rename[node.output[0]] = nhwc[node.input[0]]
                continue
            nhwc[node.input[0]] = node.output[0]
        twin = _channels_last_twin(node, nhwc, inits, const, scalar)
        if twin is not None:
            nodes.append(twin)
            nhwc[node.output[0]] = twin.output[0]
            node = helper.make_node("Transpose", [twin.output[0]], [node.output[0]], perm=TO_NCHW)
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(live_nodes(nodes, [o.name for o in graph.output]))
    used = {i for n in graph.node for i in n.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    del graph.value_info[:]  # shapes changed; the runtime infers them again
    return model


def _channels_last_twin(node: Any, nhwc: dict[str, str], inits: dict[str, Any], const: Any, scalar: Any) -> Any | None:
    """The same op on the channels-last versions of its inputs, or None when it cannot be."""
    from onnx import helper, numpy_helper

    out = node.output[0] + "_nhwc"
    if node.op_type in _LAYOUT_FREE and node.domain in ("", "com.microsoft"):
        data = _LAYOUT_FREE[node.op_type]
        if len(node.output) != 1 or any(node.input[i] not in nhwc for i in data if i < len(node.input)):
            return None
        if not all(scalar(x) for i, x in enumerate(node.input) if i not in data):
            return None  # per-channel parameters would need their axis moved too
        inputs = [nhwc[x] if i in data else x for i, x in enumerate(node.input)]
        return helper.make_node(node.op_type, inputs, [out], domain=node.domain, name=out, **_attrs(node))
    if node.op_type == "Slice" and node.input[0] in nhwc and len(node.input) >= 4 and node.input[3] in inits:
        axes = numpy_helper.to_array(inits[node.input[3]])
        moved = const(np.array([_NCHW_TO_NHWC_AXIS[int(a) % 4] for a in axes], dtype=np.int64), out + "_axes")
        return helper.make_node(
            "Slice", [nhwc[node.input[0]], node.input[1], node.input[2], moved, *node.input[4:]], [out], name=out
        )
    if node.op_type == "Pad" and node.input[0] in nhwc and node.input[1] in inits and len(node.input) < 4:
        pads = numpy_helper.to_array(inits[node.input[1]]).reshape(2, 4)[:, [0, 2, 3, 1]].reshape(-1)
        return helper.make_node(
            "Pad",
            [nhwc[node.input[0]], const(pads.astype(np.int64), out + "_pads"), *node.input[2:]],
            [out],
            name=out,
            **_attrs(node),
        )
    return None


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}

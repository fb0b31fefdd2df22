"""Optional 8-bit quantization of the tensors a trained model keeps in float (residual stream).

A QAT model quantizes layer inputs, but the sum of a residual block and its skip connection
stays float. Left float, every conv that feeds such a sum runs as a float conv in ONNX Runtime
and the integer model ends up slower than FP32. Quantizing those tensors to uint8, with ranges
calibrated on real inputs, lets the runtime fuse ``QLinearConv`` / ``QLinearAdd`` everywhere.
This adds rounding the trained model never saw; the parity check measures what it costs.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

__all__ = ["quantize_float_tensors"]

_PRODUCERS = ("Conv", "Gemm", "Add", "Pad", "Slice", "MaxPool")


def _consumers(graph: Any) -> dict[str, list[Any]]:
    users: dict[str, list[Any]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            users[name].append(node)
    return users


def _candidates(graph: Any) -> list[str]:
    """Float tensors that feed an Add or come out of one (after its ReLU), and are not yet quantized."""
    users = _consumers(graph)
    outputs = {o.name for o in graph.output}
    producer = {o: n for n in graph.node for o in n.output}
    picked: list[str] = []

    def after_relu(t: str) -> str:
        nxt = users.get(t, [])
        return nxt[0].output[0] if len(nxt) == 1 and nxt[0].op_type == "Relu" else t

    for node in graph.node:
        if node.op_type != "Add" or any(i not in producer for i in node.input):
            continue  # Adds of constants (shifts before a quantizer) stay as they are
        for t in [*node.input, after_relu(node.output[0])]:
            src = producer[t]
            if src.op_type == "Relu":
                src = producer.get(src.input[0], src)
            if src.op_type in _PRODUCERS and t not in outputs and t not in picked:
                picked.append(t)
    return picked


def quantize_float_tensors(model: Any, calib: np.ndarray, share: bool = True, batch: int = 64) -> tuple[Any, list[str]]:
    """Quantize each residual-stream tensor to uint8; return the new model and the tensor names.

    With ``share`` a tensor that also enters a layer's own input quantizer reuses that
    QuantizeLinear (its step, on the full uint8 range instead of the layer's ``2^b`` levels): one
    Q per tensor is what lets ONNX Runtime fuse the Add before it into QLinearAdd. That layer's
    input levels stay exact; a second quantizer on the same tensor (a projection shortcut) then
    requantizes the uint8 tensor, the one place where a value is rounded twice. Other tensors get
    a uint8 grid spanning their range on ``calib``.
    """
    from onnx import helper, numpy_helper

    names = _candidates(model.graph)
    users = _consumers(model.graph)
    new_nodes, inits = [], []
    shared: dict[str, Any] = {}
    if share:
        for n in names:
            qs = [u for u in users[n] if u.op_type == "QuantizeLinear"]
            if qs:
                shared[n] = qs[0]
    ranges = _calibrate(model, [n for n in names if n not in shared], calib, batch)
    for n in names:
        if n in shared:
            q_name, (_, s_name, z_name) = shared[n].output[0], shared[n].input
        else:
            low, high = min(ranges[n][0], 0.0), max(ranges[n][1], 0.0)
            scale = (high - low) / 255 or 1.0
            s_name, z_name, q_name = f"{n}.res_scale", f"{n}.res_zero", f"{n}.res_q"
            inits += [
                numpy_helper.from_array(np.array(scale, np.float32), s_name),
                numpy_helper.from_array(np.array(round(-low / scale), np.uint8), z_name),
            ]
            new_nodes.append((n, helper.make_node("QuantizeLinear", [n, s_name, z_name], [q_name], name=q_name)))
        dq_name = f"{n}.res_dq"
        new_nodes.append(
            (q_name, helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [dq_name], name=dq_name))
        )
        for user in users[n]:
            if user.op_type != "QuantizeLinear" or (n in shared and user is not shared[n]):
                for j, inp in enumerate(user.input):
                    if inp == n:
                        user.input[j] = dq_name
    model.graph.initializer.extend(inits)
    _insert_sorted(model.graph, new_nodes)
    return model, names


def _calibrate(model: Any, names: list[str], calib: np.ndarray, batch: int) -> dict[str, tuple[float, float]]:
    """(min, max) of each named tensor over ``calib``."""
    import onnx
    from onnx import helper

    from qdistill.export.bench import ort_session

    if not names:
        return {}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for n in names:
        probe.graph.output.append(helper.make_empty_tensor_value_info(n))
    sess = ort_session(probe.SerializeToString())
    ranges = {n: (np.inf, -np.inf) for n in names}
    for i in range(0, len(calib), batch):
        for n, v in zip(names, sess.run(names, {"input": calib[i : i + batch]})):
            ranges[n] = (min(ranges[n][0], float(v.min())), max(ranges[n][1], float(v.max())))
    return ranges


def _insert_sorted(graph: Any, new_nodes: list[tuple[str, Any]]) -> None:
    """Add the new nodes and re-sort the graph topologically (stable: original order where free)."""
    nodes = list(graph.node) + [n for _, n in new_nodes]
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    ordered, pending = [], nodes
    while pending:
        rest = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            produced = {o for n in rest for o in n.output}
            missing = {i for n in rest for i in n.input if i not in ready and i not in produced}
            raise RuntimeError(f"export: residual quantization produced a cycle {sorted(missing)[:5]}")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)

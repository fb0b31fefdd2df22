"""Latency and throughput of ONNX files in ONNX Runtime, with the thread count pinned.

Speed ratios only mean something when both models run in the same runtime, with the same
settings, in the same process, one after the other; `compare` does exactly that.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from qdistill.errors import ExportError, MissingFileError

__all__ = ["compare", "input_shape_of", "measure", "measure_feeds", "open_onnx", "ort_session", "print_rows"]


def ort_session(path_or_bytes: str | Path | bytes, threads: int = 2) -> Any:
    """An ONNX Runtime CPU session with all graph optimisations and ``threads`` intra-op threads
    (float32 MatMulNBits, see below)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    # ONNX Runtime fuses DequantizeLinear(int8 weight) -> MatMul with a float input into MatMulNBits,
    # which by default (level 4) also rounds that input to int8 per block: not the grid the model
    # was trained on (1e-4 logit moves on a W4 transformer). Level 1 computes it in float32, exactly.
    so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    src = str(path_or_bytes) if isinstance(path_or_bytes, Path) else path_or_bytes
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def open_onnx(path: str | Path, threads: int = 2, what: str = "model") -> Any:
    """`ort_session` on a file the user named: one-line errors for a missing or non-ONNX file."""
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{what} not found: {path}")
    try:
        return ort_session(path, threads)
    except (ort_state.InvalidProtobuf, ort_state.InvalidArgument, ort_state.InvalidGraph, ort_state.Fail) as e:
        raise ExportError(
            f"{path} is not an ONNX model ONNX Runtime can load: {str(e).splitlines()[0][:200]}"
        ) from None


def input_shape_of(session: Any) -> tuple[int, ...]:
    """One input's shape (C, H, W) as the ONNX model declares it (the batch dimension dropped)."""
    inp = session.get_inputs()[0]
    dims = inp.shape[1:]
    if not all(isinstance(d, int) and d > 0 for d in dims):
        raise ExportError(
            f"the ONNX model's input {inp.name} has no fixed shape {inp.shape}: pass the shape explicitly"
        )
    return tuple(dims)


def measure(session: Any, shape: tuple[int, ...], seconds: float = 1.0, warmup: int = 3) -> dict[str, float]:
    """Median latency (ms) and images/s of ``session`` on a random batch of ``shape``."""
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    return measure_feeds(session, {session.get_inputs()[0].name: x}, seconds, warmup)


def measure_feeds(
    session: Any, feeds: dict[str, np.ndarray], seconds: float = 1.0, warmup: int = 3
) -> dict[str, float]:
    """Median latency (ms) and examples/s of ``session`` on the inputs ``feeds`` (by name)."""
    for _ in range(warmup):
        session.run(None, feeds)
    times: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 5:
        t0 = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - t0)
    ms = float(np.median(times)) * 1e3
    batch = len(next(iter(feeds.values())))
    return {"batch": batch, "latency_ms": ms, "images_per_s": batch / ms * 1e3, "runs": len(times)}


def compare(
    fp32: str | Path,
    quantized: str | Path,
    input_shape: tuple[int, ...] | None = None,
    batches: tuple[int, ...] = (1, 64),
    threads: int = 2,
    seconds: float = 1.0,
) -> list[dict[str, Any]]:
    """Measure an FP32 and a quantized ONNX file alternately; rows carry the ratio to FP32.

    ``input_shape`` is one image's shape (C, H, W), checked against the quantized model's
    declared input; None reads it from there. Runs
    are interleaved per batch size so that load from other processes affects both models alike.
    """
    sessions = {"fp32": open_onnx(fp32, threads, "FP32 reference"), "int8": open_onnx(quantized, threads)}
    shape = input_shape_of(sessions["int8"])
    if input_shape is not None and tuple(input_shape) != shape:
        raise ExportError(
            f"input shape {','.join(map(str, input_shape))} differs from the model's "
            f"{','.join(map(str, shape))}: pass that shape, or none"
        )
    sizes = {"fp32": os.path.getsize(fp32), "int8": os.path.getsize(quantized)}
    rows: list[dict[str, Any]] = []
    for batch in batches:
        base = None
        for fmt, sess in sessions.items():
            r = measure(sess, (batch, *shape), seconds)
            base = base or r["images_per_s"]
            rows.append(
                {
                    "format": fmt,
                    **r,
                    "ratio_vs_fp32": r["images_per_s"] / base,
                    "file_bytes": sizes[fmt],
                    "threads": threads,
                }
            )
    return rows


def print_rows(rows: list[dict[str, Any]], title: str) -> None:
    """Print `compare` rows as a table, with the pinned thread count."""
    print(f"{title} (ONNX Runtime, {rows[0]['threads']} intra-op threads)")
    print(f"{'format':<6} {'batch':>5} {'latency ms':>11} {'img/s':>9} {'vs FP32':>8} {'file':>10}")
    for r in rows:
        print(
            f"{r['format']:<6} {r['batch']:>5} {r['latency_ms']:>11.2f} {r['images_per_s']:>9.0f} "
            f"{r['ratio_vs_fp32']:>7.2f}x {r['file_bytes'] / 1024:>7.0f} KiB"
        )

"""Data parallel training on torch.distributed: process group, synced BatchNorm, wrapping, launching.

The trainer trains the same run in N processes as in one: every rank holds a full copy of
student (``ddp``; ``fsdp``: 1/N of it, see `qdistill.train.fsdp`), objective and frozen teacher,
takes its contiguous shard of each global batch (`BatchLoader(num_shards=, shard=)`), and the
gradients of the mean loss are averaged. Nothing here changes the checkpoint: state dicts are
those of the unwrapped modules and steps count global batches, so a run resumes under any world
size.

Started by ``torchrun`` (its ``RANK``/``WORLD_SIZE``/``MASTER_*`` variables) or by `launch`
(``qdistill train --nproc N``), which starts N copies of a command with the same variables and
stops them all, with the first failure's message only, when one fails.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from qdistill.errors import ConfigError, QdistillError

__all__ = [
    "PeerFailedError",
    "SyncBatchNorm",
    "active",
    "all_reduce_mean",
    "barrier",
    "is_main",
    "launch",
    "process_group",
    "rank_and_world",
    "wrap",
]


def active() -> bool:
    """True inside a torch.distributed process group (also one of a single process)."""
    return dist.is_available() and dist.is_initialized()


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) outside a process group."""
    return (dist.get_rank(), dist.get_world_size()) if active() else (0, 1)


def is_main() -> bool:
    """True in the one process that writes files: rank 0 (of the group, else of torchrun's ``RANK``)."""
    return (dist.get_rank() if active() else int(os.environ.get("RANK", "0"))) == 0


def barrier() -> None:
    """Wait for every rank (nothing outside a process group)."""
    if active():
        dist.barrier()


def all_reduce_mean(values: dict[str, Tensor]) -> dict[str, Tensor]:
    """The mean over ranks of scalar logs (0-dim tensors of one dtype and device, left there: no
    host sync); unchanged outside a process group."""
    _, world = rank_and_world()
    if world == 1 or not values:
        return values
    t = torch.stack(list(values.values()))
    dist.all_reduce(t)
    return dict(zip(values, (t / world).unbind()))


class PeerFailedError(QdistillError, RuntimeError):
    """This rank stopped because another process of the run failed, was killed or hung."""


PEER_GRACE_S = 3.0  # a rank whose peer died waits this long for its launcher to stop it silently
_PEER_SIGNS = ("Connection closed by peer", "Connection reset by peer", "Timed out", "timed out", "Broken pipe")


def _peer_failure(e: BaseException) -> bool:
    """Whether ``e`` is a collective that failed because of another rank (not a problem of this one)."""
    return isinstance(e, dist.DistError) or (isinstance(e, RuntimeError) and any(s in str(e) for s in _PEER_SIGNS))


@contextmanager
def process_group(timeout_s: float = 600.0, device: str = "auto") -> Iterator[bool]:
    """Join the process group that ``torchrun``/`launch` describe in the environment; yield True if any.

    gloo on CPU, NCCL on CUDA; ``timeout_s`` bounds every collective, so a rank whose peer hangs
    stops instead of waiting forever. A rank stopped by a peer's failure waits `PEER_GRACE_S` (its
    launcher stops it meanwhile, so only the failing rank's message is shown), then raises a
    one-line `PeerFailedError`. The group is destroyed on exit (after a barrier: every rank done), also
    after an error.
    """
    if "WORLD_SIZE" not in os.environ or active():
        yield False
        return
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(seconds=timeout_s))
    try:
        yield True
        dist.barrier()  # no rank tears the group down while a peer still uses it (gloo can abort then)
    except Exception as e:
        rank, world = rank_and_world()
        if world == 1 or not _peer_failure(e):
            raise
        time.sleep(PEER_GRACE_S)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PeerFailedError(
            f"rank {rank} stopped: another process of the run failed or hung ({first[:160]})"
        ) from None
    finally:
        dist.destroy_process_group()


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose gradient is the sum over ranks of the incoming gradients (differentiable
    twice, for EWGS's Hessian-vector products)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:  # type: ignore[override]
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Tensor:  # type: ignore[override]
        return _AllReduceSum.apply(g)


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch, on any backend (gloo too).

    torch's `nn.SyncBatchNorm` refuses CPU tensors; this one all-reduces the per-channel sum and
    then the centred sum of squares (two passes: the variance of the whole batch, computed as one
    process would), with autograd through the all-reduce so the gradient is the global batch's.
    Outside a process group, or in eval mode, it is plain BatchNorm. Same state dict keys.
    """

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input, got {x.dim()}D")

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        if not (self.training and active()):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.to(torch.promote_types(x.dtype, torch.float32))  # bf16/fp16 statistics in fp32
        count = torch.tensor([x.numel() // x.shape[1]], dtype=xf.dtype, device=x.device)
        sums = _AllReduceSum.apply(torch.cat([xf.sum(dims), count]))
        total = sums[-1].detach()
        mean = sums[:-1] / total
        centred = xf - mean.view(shape)
        var = _AllReduceSum.apply(centred.square().sum(dims)) / total
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), total)
        return y.to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor, n: Tensor) -> None:
        """As `nn.BatchNorm`: momentum (or a cumulative average for ``momentum=None``), unbiased variance;
        ``n`` stays a tensor, so a GPU step does not wait on the host once per layer."""
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.lerp_(mean.to(self.running_mean), factor)
        self.running_var.lerp_((var * n / (n - 1).clamp_min(1)).to(self.running_var), factor)


def convert_sync_batchnorm(module: nn.Module, cuda: bool) -> int:
    """Replace every BatchNorm in ``module`` by a synced one, in place, keeping its Parameter and
    buffer objects (so optimizers and references stay valid); return how many were replaced.

    On CUDA torch's `nn.SyncBatchNorm` (fused kernels), elsewhere `SyncBatchNorm` above.
    """
    replaced = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.modules.batchnorm._BatchNorm) or isinstance(
                child, (SyncBatchNorm, nn.SyncBatchNorm)
            ):
                continue
            cls = nn.SyncBatchNorm if cuda else SyncBatchNorm
            new = cls(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            for key, value in [*child.named_parameters(recurse=False), *child.named_buffers(recurse=False)]:
                setattr(new, key, value)
            new.train(child.training)
            setattr(parent, name, new)
            replaced += 1
    return replaced


def _average_output_grad(module: nn.Module, args: Any, out: Tensor) -> None:
    """Forward hook: the gradient reaching this output becomes its mean over the ranks (differentiably)."""
    if out.requires_grad:
        world = dist.get_world_size()
        out.register_hook(lambda g: _AllReduceSum.apply(g) / world)


def sync_ewgs_weight_grads(student: nn.Module) -> int:
    """Make EWGS weight quantizers see the gradient of the global batch; return how many.

    EWGS scales a gradient by ``1 + delta * sign(g) * (x_c - x_q)``: for a weight, ``g`` sums over
    the batch, and the sign of one rank's partial sum is not the sign of the whole batch's, so the
    average of per-rank EWGS gradients is not the EWGS gradient. Averaging the gradient at the
    quantizer's output first makes it so (activations are per sample and need nothing).
    """
    from qdistill.quant.base import Quantizer

    qs = [m for m in student.modules() if isinstance(m, Quantizer) and m.is_weight and m.backward_mode == "ewgs"]
    for q in qs:
        q.register_forward_hook(_average_output_grad)
    return len(qs)


class _Joint(nn.Module):
    """Student and objective as one module, so one wrapper averages the gradients of both
    (GoR scalars, SQuaT adaptors, regressors). The teacher is no submodule of either: it is never wrapped."""

    def __init__(self, objective: nn.Module) -> None:
        super().__init__()
        self.student, self.objective = objective.student, objective

    def forward(self, inputs: Any, labels: Tensor | None) -> tuple[Tensor, dict[str, Tensor]]:
        return self.objective(inputs, labels)


def _check_calibrated(student: nn.Module) -> None:
    from qdistill.quant.base import Quantizer

    raw = [n for n, m in student.named_modules() if isinstance(m, Quantizer) and not bool(m.initialized)]
    if raw:
        raise ConfigError(
            f"quantizer {raw[0]} is not initialized: calibrate the student (make_student(teacher, "
            "config, calib_batch)) before data parallel training, so every rank starts alike"
        )


def wrap(objective: nn.Module, device: torch.device, mode: str = "ddp") -> nn.Module:
    """The module a data parallel step calls as ``step(inputs, labels) -> (loss, logs)``.

    ``ddp``: DistributedDataParallel over student + objective. ``fsdp``: the student sharded in
    place with FSDP2 (`qdistill.train.fsdp.shard`), the objective's parameters kept whole. Either
    way BatchNorm is synced. Call after quantizing and before building the optimizer.
    """
    _check_calibrated(objective.student)
    joint = _Joint(objective)
    convert_sync_batchnorm(joint, device.type == "cuda")
    if rank_and_world()[1] > 1:
        sync_ewgs_weight_grads(objective.student)
    if mode == "fsdp":
        from qdistill.train.fsdp import shard

        shard(joint, device)
        return joint
    ids = [torch.cuda.current_device() if device.index is None else device.index] if device.type == "cuda" else None
    # static_graph: parameters a method never uses (e.g. a frozen part) are handled without a graph walk per step
    return nn.parallel.DistributedDataParallel(joint, device_ids=ids, static_graph=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pump(src: Any, dst: Any, keep: io.BytesIO, live: threading.Event, shown: list[int], lock: threading.Lock) -> None:
    """Copy a worker's stderr to ours while ``live`` is set (progress bars stay live), keeping it all;
    ``shown[0]`` counts the bytes that reached the screen. ``lock`` makes a chunk's write and count
    one step, so whoever clears ``live`` under it knows exactly what was shown."""
    for chunk in iter(lambda: src.read1(4096), b""):
        with lock:
            keep.write(chunk)
            if live.is_set():
                dst.write(chunk)
                dst.flush()
                shown[0] = keep.tell()


def launch(argv: Sequence[str], nproc: int, poll_s: float = 0.05) -> int:
    """Run ``python ARGV`` in ``nproc`` processes of one process group (torchrun's variables) on this
    machine; return 0, or the exit code of the first process that failed.

    When one fails the others are stopped at once, and only the failing one's stderr is shown
    (rank 0's stderr is shown live until then), so a failure prints one message, not N.
    """
    if nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {nproc}")
    port = _free_port()
    live = threading.Event()
    live.set()
    with ExitStack() as stack:
        procs, logs = [], []
        for rank in range(nproc):
            env = {
                **os.environ,
                "RANK": str(rank),
                "LOCAL_RANK": str(rank),
                "WORLD_SIZE": str(nproc),
                "LOCAL_WORLD_SIZE": str(nproc),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
            }
            logs.append(subprocess.PIPE if rank == 0 else stack.enter_context(tempfile.TemporaryFile()))
            procs.append(subprocess.Popen([sys.executable, *argv], env=env, stderr=logs[-1]))
        logs[0], shown, lock = io.BytesIO(), [0], threading.Lock()
        pump = threading.Thread(
            target=_pump, args=(procs[0].stderr, sys.stderr.buffer, logs[0], live, shown, lock), daemon=True
        )
        pump.start()
        failed = None
        try:
            while failed is None and any(p.poll() is None for p in procs):
                failed = _first_failure(procs)
                time.sleep(poll_s)
            failed = failed if failed is not None else _first_failure(procs)
        finally:
            if failed is not None and not (failed == 0 and procs[0].returncode > 0):
                live.clear()  # rank 0's reaction to a peer's failure is not the message
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in procs:
                p.wait()
            pump.join(timeout=5)
        if failed is None:
            return 0
        failed = _first_failure(procs, ignore=-signal.SIGTERM)  # all have ended: the one that failed by itself
        with lock:  # from here on the pump (if still reading) shows nothing: no line appears twice
            live.clear()
            logs[failed].seek(shown[0] if failed == 0 else 0)  # what of rank 0's message is not on screen yet
            message = logs[failed].read()
            if failed != 0 and _already_shown(message, logs[0].getvalue()[: shown[0]]):
                message = b""  # every rank hit the same error and rank 0's copy is on screen
        sys.stderr.buffer.write(message)
        sys.stderr.flush()
        return procs[failed].returncode


def _already_shown(message: bytes, shown: bytes) -> bool:
    """Whether a message's last line (the error itself) is already among the lines on screen."""
    lines = message.strip().splitlines()
    return bool(lines) and lines[-1].strip() in {line.strip() for line in shown.splitlines()}


def _first_failure(procs: list[subprocess.Popen], ignore: int | None = None) -> int | None:
    """The rank that failed, preferring a clean error exit (a user error, code > 0) over a crash or
    an abort by a collective whose peer died (a signal); None while none has failed."""
    codes = [p.poll() for p in procs]
    failed = [r for r, c in enumerate(codes) if c not in (None, 0, ignore)]
    return next((r for r in failed if codes[r] > 0), failed[0] if failed else None)

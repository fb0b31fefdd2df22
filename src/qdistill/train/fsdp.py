"""Sharded data parallel training with FSDP2 (``fully_shard``): ``train.distributed: fsdp``.

Each rank keeps 1/N of every student weight (and of its gradient and optimizer state) between
steps and gathers a block's whole weights only while it runs. The student is sharded per block
(the entries of its outermost ``nn.ModuleList``: transformers' ``model.layers``, ``encoder.layer``,
``h``), then at its root (embeddings, head, norms); the teacher is never touched (frozen, no
gradient).

Kept whole on every rank, their gradients averaged over the ranks by a hook (as FSDP averages the
sharded ones): the objective's own parameters (GoR's loss weights, SQuaT/EKD adaptors, regressors:
small, and read outside a forward, e.g. for logs) and the student's 0-dim parameters (per-tensor
LSQ/PACT steps), which ``fully_shard`` refuses. Before sharding every rank takes rank 0's
parameters, buffers and quantizer state, so all start from the same calibration (as DDP does).

Checkpoints stay those of one process: `full_state_dict` gathers whole tensors on rank 0, and
`load_state_dict` (model) / `load_optimizer_state` shard a whole state again, so a run resumes under
any world size and across ddp / fsdp / one process. After training `release` turns the sharded
modules back into plain ones with whole weights, so what follows ``fit`` (evaluation, export,
saving) sees the same student as without FSDP.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "all_finite",
    "blocks",
    "full_optimizer_state",
    "full_state_dict",
    "is_sharded",
    "load_optimizer_state",
    "load_state_dict",
    "release",
    "shard",
    "whole_weights",
]


# torch.distributed.fsdp / .tensor / .checkpoint take seconds to import: loaded by `shard`, and
# before that no module is sharded and no tensor a DTensor, which the checks below use.


def _is_dtensor(t: object) -> bool:
    mod = sys.modules.get("torch.distributed.tensor")
    return mod is not None and isinstance(t, mod.DTensor)


def is_sharded(module: nn.Module) -> bool:
    """Whether ``module`` holds FSDP modules (its parameters may be registered whole or sharded)."""
    mod = sys.modules.get("torch.distributed.fsdp")
    return mod is not None and any(isinstance(m, mod.FSDPModule) for m in module.modules())


def _reshard(module: nn.Module) -> None:
    """Register the shards again: a root stays gathered after a no-grad forward (validation), and
    the state dict functions read the registered parameters."""
    from torch.distributed.fsdp import FSDPModule

    for m in module.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def blocks(model: nn.Module) -> list[nn.Module]:
    """The units sharded before the root: the entries (with parameters) of the outermost ModuleLists."""
    found: list[nn.Module] = []
    inside: set[int] = set()
    for m in model.modules():
        if id(m) in inside:
            continue
        if isinstance(m, nn.ModuleList):
            found += [b for b in m if any(True for _ in b.parameters())]
            inside |= {id(x) for x in m.modules()}
    return found


def _average_grad(p: Tensor) -> None:
    """Post-accumulate hook of a replicated parameter: its gradient becomes the mean over the ranks."""
    dist.all_reduce(p.grad)
    p.grad.div_(dist.get_world_size())


@torch.no_grad()
def _take_rank0_state(module: nn.Module, device: torch.device) -> None:
    """Every rank gets rank 0's parameters, buffers and quantizer state (signedness, initialised)."""
    from qdistill.quant.base import Quantizer

    for t in [*module.parameters(), *module.buffers()]:
        dist.broadcast(t.data, 0)
    for q in (m for m in module.modules() if isinstance(m, Quantizer)):
        flags = q.get_extra_state().to(device, torch.uint8)  # NCCL broadcasts CUDA tensors only
        dist.broadcast(flags, 0)
        q.set_extra_state(flags.bool().cpu())


def shard(joint: nn.Module, device: torch.device) -> None:
    """Shard ``joint.student`` in place: per block, then its root (an FSDP root of its own, so the
    student can be called alone: validation, EWGS's estimate). The objective's parameters stay whole.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    _take_rank0_state(joint, device)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    whole = {p for p in joint.student.parameters() if p.dim() == 0} | set(joint.objective.parameters())
    for p in whole:
        if p.requires_grad:
            p.register_post_accumulate_grad_hook(_average_grad)
    for b in blocks(joint.student):
        fully_shard(b, mesh=mesh, ignored_params=whole)
    fully_shard(joint.student, mesh=mesh, ignored_params=whole)


@contextmanager
def whole_weights(root: nn.Module) -> Iterator[None]:
    """Keep gathered weights whole until the end of the block (every rank enters it).

    For what differentiates twice (EWGS's Hessian-vector products): FSDP frees a block's whole
    weights after its forward and backward, which the second backward still reads. Costs the
    memory of whole weights meanwhile; afterwards blocks reshard after forward again (the root does
    not, FSDP's own choice for a root).
    """
    from torch.distributed.fsdp import FSDPModule

    fsdp = [m for m in root.modules() if isinstance(m, FSDPModule)]
    for m in fsdp:
        m.set_reshard_after_forward(False, recurse=False)
        m.set_reshard_after_backward(False, recurse=False)
    try:
        yield
    finally:
        for m in fsdp:
            m.set_reshard_after_backward(True, recurse=False)
            m.set_reshard_after_forward(m is not root, recurse=False)
            m.reshard()


def all_finite(tensors: list[Tensor]) -> Tensor:
    """1.0 when every element is finite, on every rank, else 0.0: for a sharded tensor, in all of its
    shards (``get_total_norm(..., inf)`` of a mix of shards and whole tensors is this rank's alone).
    A 0-dim tensor on the tensors' device, so asking costs no host sync."""
    local = [t.to_local() if _is_dtensor(t) else t for t in tensors]
    ok = torch.stack([torch.isfinite(t).all() for t in local]).all().float() if local else torch.ones(())
    if any(_is_dtensor(t) for t in tensors):
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return ok


def full_state_dict(module: nn.Module) -> dict[str, Any]:
    """``module.state_dict()`` with whole tensors. Sharded: a collective (every rank calls it) whose
    result, on the CPU, only rank 0 gets (the others get ``{}``): only rank 0 writes checkpoints."""
    if not is_sharded(module):
        return module.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    _reshard(module)
    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_state_dict(module: nn.Module, state: dict[str, Any]) -> None:
    """Load a whole state dict (any world size's checkpoint); sharded: rank 0's ``state`` is what
    every rank loads (the others may pass ``{}``, as `full_state_dict` gave them)."""
    if not is_sharded(module):
        module.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    _reshard(module)
    # a copy: set_model_state_dict replaces the entries of the dict it is given by shards
    set_model_state_dict(module, dict(state), options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


def _params(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    return [p for g in optimizer.param_groups for p in g["params"]]


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` with whole tensors, on the CPU. Sharded: a collective whose result
    only rank 0 gets (the others ``{}``), gathered one tensor at a time.

    Not `get_optimizer_state_dict`: that one keys the state by parameter name, qdistill's
    checkpoints (one process, DDP) by position as `torch.optim.Optimizer.state_dict` does;
    gathering the sharded tensors of the usual dict keeps that one format with no translation.
    """
    sd = optimizer.state_dict()
    if not any(_is_dtensor(p) for p in _params(optimizer)):
        return sd
    rank0, whole = dist.get_rank() == 0, {}
    for i, state in sd["state"].items():
        gathered = {k: v.full_tensor() if _is_dtensor(v) else v for k, v in state.items()}  # every rank
        if rank0:
            whole[i] = {k: v.cpu() if isinstance(v, Tensor) else v for k, v in gathered.items()}
    return {**sd, "state": whole} if rank0 else {}


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a whole optimizer state: each rank keeps the shards of its parameters (no communication)."""
    params = _params(optimizer)
    if not any(_is_dtensor(p) for p in params):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.tensor import distribute_tensor

    def local(i: int, v: Any) -> Any:
        p = params[i]
        if _is_dtensor(p) and isinstance(v, Tensor) and v.shape == p.shape:
            return distribute_tensor(v.to(p.device), p.device_mesh, p.placements, src_data_rank=None)
        return v

    shards = {i: {k: local(int(i), v) for k, v in s.items()} for i, s in state["state"].items()}
    optimizer.load_state_dict({**state, "state": shards})


@torch.no_grad()
def release(module: nn.Module) -> None:
    """Undo ``fully_shard`` under ``module`` (every rank calls it): whole weights in plain Parameters,
    FSDP's hooks removed and the original classes back, so one process can use the model alone.

    FSDP2 has no public inverse of ``fully_shard``; this reads its per-module state (torch 2.13).
    """
    from torch.distributed.fsdp import FSDPModule, fully_shard

    whole: dict[int, nn.Parameter] = {}
    for m in module.modules():
        for name, p in list(m._parameters.items()):
            if _is_dtensor(p):
                if id(p) not in whole:  # tied weights stay tied
                    whole[id(p)] = nn.Parameter(p.full_tensor(), requires_grad=p.requires_grad)
                m._parameters[name] = whole[id(p)]
    for m in module.modules():
        for attr in ("_is_fsdp_managed_module", "_fsdp_use_orig_params"):
            m.__dict__.pop(attr, None)
        if not isinstance(m, FSDPModule):
            continue
        state = fully_shard.state(m)
        state._pre_forward_hook_handle.remove()
        state._post_forward_hook_handle.remove()
        for group in state._fsdp_param_groups:
            for handles in (
                group._module_to_pre_save_state_dict_hook_handle,
                group._module_to_pre_load_state_dict_hook_handle,
            ):
                for h in handles.values():
                    h.remove()
            for fp in group.fsdp_params:
                fp._post_load_hook_handle.remove()
        m.__class__ = next(c for c in type(m).__bases__ if c is not FSDPModule)

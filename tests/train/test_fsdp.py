"""``train.distributed: fsdp`` is the same training: 2 sharded gloo processes vs 1 unsharded process.

The harness of test_distributed.py (same global batches, steps, kill and resume), three launches:
one process (``ddp``: the unsharded reference) runs ``full`` and ``part``; two FSDP processes run
``full``, ``part`` and ``resume`` (continuing the one-process ``part``: ddp -> fsdp, 1 -> 2); one
process then resumes the two-process ``part`` (fsdp -> ddp, 2 -> 1). Cases: a tiny random-init
Llama causal LM (the blocks' nn.Linear W2A4, EWGS with its Hessian-estimated delta, and LSQ) and
the 3-conv BatchNorm network with an objective-side BatchNorm adaptor (SQuaT) and replicated
scalars (GoR's loss weights, PACT's clip values).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from test_distributed import STEPS_PER_EPOCH, STOP_AT, _case, launch_json, train, train_config

LM_CASES = ["llama-ewgs", "llama-lsq"]
CNN_CASES = [("sqakd", "ewgs", {}), ("squat", "pact", {"adaptor": True}), ("gor", "pact", {})]
NAMES = LM_CASES + [f"{m}-{q}" for m, q, _ in CNN_CASES]


def _tokens(n: int, length: int, seed: int):
    import torch

    return torch.randint(0, 32, (n, length), generator=torch.Generator().manual_seed(seed))


def _token_loader(ids, batch: int, world: int, rank: int, shuffle: bool):
    """Token-id batches in qdistill's resumable epoch order, each rank its rows of the global batch."""
    from qdistill.data.loader import EpochLoader, take

    class Tokens(EpochLoader):
        def _batch(self, index, epoch, b):
            return {"input_ids": take(ids, index)[self._rows(batch)]}

    return Tokens(len(ids), batch, shuffle=shuffle, drop_last=True, seed=3, num_shards=world, shard=rank)


def _llama(root: Path, mode: str, world: int, quantizer: str, distributed: str) -> tuple[dict, object]:
    from tiny_transformers import llama

    import qdistill
    from qdistill.train.distributed import rank_and_world

    rank, _ = rank_and_world()
    teacher = llama(
        vocab_size=32,
        initializer_range=0.5,  # confident logits: a KL loss far above rounding
        attn_implementation="eager",  # EWGS's Hessian differentiates twice; CPU SDPA has no double backward
    )
    ids = _tokens(24, 8, 1)
    student = qdistill.make_student(teacher, qdistill.QuantConfig(method=quantizer, weight_bits=2, act_bits=4), ids)
    objective = qdistill.build_objective("sqakd", student, teacher)
    cfg = train_config(distributed)
    loader = _token_loader(ids, 8, world, rank, shuffle=True)
    val = _token_loader(ids[:8], 8, 1, 0, shuffle=False)
    out = root / f"llama-{quantizer}" / (f"part{3 - world}" if mode == "resume" else f"{mode}{world}")
    return train(objective, loader, cfg, val, out, mode)


def _after_fit(trainer) -> dict:
    """On rank 0 alone (no collective could complete): the student is plain and runs; its output."""
    import torch
    from torch.distributed.tensor import DTensor

    from qdistill.batch import call_model, logits_of

    student = trainer.student
    if hasattr(student, "model"):  # the causal LM
        inputs = {"input_ids": _tokens(4, 8, 2)}
    else:
        inputs = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    student.eval()
    with torch.no_grad():
        out = logits_of(call_model(student, inputs)).double()
    plain = not any(isinstance(p, DTensor) for p in student.parameters())
    plain &= not any(type(m).__name__.startswith("FSDP") for m in student.modules())
    return {"plain": plain, "out": out.flatten().tolist()}


def _worker(out: str, modes: str) -> None:
    import torch

    from qdistill.train.distributed import process_group, rank_and_world

    torch.set_num_threads(1)
    root = Path(out).parent
    with process_group(timeout_s=60):
        rank, world = rank_and_world()
        distributed = "fsdp" if world == 2 else "ddp"
        results: dict[str, dict] = {}
        for mode in modes.split(","):
            for name in NAMES:
                if name.startswith("llama-"):
                    run, trainer = _llama(root, mode, world, name.removeprefix("llama-"), distributed)
                else:
                    method, quantizer, params = next(c for c in CNN_CASES if f"{c[0]}-{c[1]}" == name)
                    run, trainer = _case(root, mode, world, method, quantizer, params, distributed)
                if mode == "full" and rank == 0:
                    run.update(_after_fit(trainer))
                results[f"{mode}{world}/{name}"] = run
        if rank == 0:
            Path(out).write_text(json.dumps(results))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    tmp = tmp_path_factory.mktemp("fsdp")
    results = launch_json(tmp, "full,part", 1, __file__)
    results |= launch_json(tmp, "full,part,resume", 2, __file__)  # resume: continues part1
    results |= launch_json(tmp, "resume", 1, __file__)  # continues part2
    return tmp, results


@pytest.mark.parametrize("case", NAMES)
def test_fsdp_trains_as_one_process(runs, case):
    _, r = runs
    one, two = r[f"full1/{case}"], r[f"full2/{case}"]
    assert len(one["losses"]) == len(two["losses"]) == 2 * STEPS_PER_EPOCH
    assert one["losses"] == pytest.approx(two["losses"], abs=1e-6, rel=0)
    assert one["losses"][0] != pytest.approx(one["losses"][-1], abs=1e-4)  # it trained
    assert one["delta"] == pytest.approx(two["delta"], rel=1e-5)
    assert two["plain"] and one["plain"]  # fit hands back an unsharded student, usable by one process
    assert two["out"] == pytest.approx(one["out"], abs=1e-5)  # the best epoch's weights, whole


@pytest.mark.parametrize("case", NAMES)
def test_fsdp_resume_under_another_world_size(runs, case):
    _, r = runs
    full = r[f"full1/{case}"]["losses"]
    for written, resumed in (("part2", "resume1"), ("part1", "resume2")):
        assert r[f"{written}/{case}"]["losses"] == pytest.approx(full[:STOP_AT], abs=1e-6, rel=0)
        assert r[f"{resumed}/{case}"]["losses"] == pytest.approx(full[STOP_AT - 1 :], abs=1e-6, rel=0)


@pytest.mark.parametrize("case", NAMES)
def test_fsdp_checkpoint_is_the_one_process_checkpoint(runs, case):
    """Same entries, shapes and (to rounding) values as the unsharded run's, optimizer state included."""
    import torch

    from qdistill.train.checkpoint import load_checkpoint

    tmp, _ = runs
    one, two = (load_checkpoint(tmp / case / f"full{w}" / "last.pt") for w in (1, 2))
    assert two["train_config"]["distributed"] == "fsdp" and one["epoch"] == two["epoch"] == 2
    assert one["best"]["epoch"] == two["best"]["epoch"]
    pairs = [(one[k], two[k]) for k in ("student", "objective")] + [(one["best"]["student"], two["best"]["student"])]
    for one_sd, two_sd in pairs:
        assert one_sd.keys() == two_sd.keys()
        for k, v in one_sd.items():
            assert not hasattr(two_sd[k], "device_mesh") and two_sd[k].shape == v.shape, k
            assert torch.allclose(two_sd[k].float(), v.float(), atol=1e-5), k
    opt1, opt2 = one["optimizer"], two["optimizer"]
    assert [g["params"] for g in opt1["param_groups"]] == [g["params"] for g in opt2["param_groups"]]
    assert opt1["state"].keys() == opt2["state"].keys() and opt1["state"]
    for i, s in opt1["state"].items():
        assert torch.allclose(opt2["state"][i]["momentum_buffer"], s["momentum_buffer"], atol=1e-5), i


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tiny_transformers, as pytest's pythonpath does
    _worker(*sys.argv[1:])

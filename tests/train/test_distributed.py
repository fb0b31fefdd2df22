"""Data parallel training is the same training: 1 vs 2 gloo processes, same global batch.

Each launch runs every case in one process group (``python THIS_FILE OUT MODE``, started by
`qdistill.train.distributed.launch` with torchrun's variables), so the whole module costs three
launches. A case trains 2 epochs of 3 global batches of 8 images (crop+flip augmentation,
shuffled) and records the mean loss of every step and the EWGS delta of every epoch:

* ``full``: uninterrupted;
* ``part``: stopped after step 5 (the last checkpoint is mid-epoch, after step 4);
* ``resume``: continues the *other* world size's ``part`` run to the end.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

CASES = [  # every method (ekd: two teachers of other widths, hence adaptors) and every quantizer
    ("sqakd", "ewgs", {}),
    ("sqakd", "lsq", {}),
    ("squat", "pact", {"adaptor": True}),  # an objective-side BatchNorm adaptor, trained and synced
    ("gor", "pact", {}),
    ("ekd", "ewgs", {}),
    ("squat", "lsq", {}),
]
# a large fixed EWGS delta: its sign(g) scaling of weight gradients must see the global batch's gradient
FIXED_DELTA = ("sqakd", "ewgs-fixed", {})
CASES.append(FIXED_DELTA)
# float64: rounding no longer hides a difference of 1e-10 (the EWGS delta of an activation once was
# that far off with 2 processes: a rank's gradients are world size times the global mean loss's)
FLOAT64 = ("sqakd", "ewgs-float64", {})
CASES.append(FLOAT64)
QUANT_EXTRA = {  # the float64 case quantizes the classifier: its Hessian is positive semi-definite, so
    # its delta is > 0 (the tiny net's hidden-layer traces come out negative, hence delta 0)
    "ewgs-fixed": {"backward_coef": 0.5},
    "ewgs-float64": {"keep_last": False},
}
NAMES = [f"{m}-{q}" for m, q, _ in CASES]
STEPS_PER_EPOCH, STOP_AT = 3, 5


def _net(width: int):
    """Three conv-BN-ReLU blocks and average pooling: no max-pool, whose ties (frequent behind 2-bit
    activations) would route gradients by float rounding rather than by the data."""
    from torch import nn

    class Net(nn.Module):
        first_conv, classifier = "conv1", "fc"

        def __init__(self) -> None:
            super().__init__()
            for i, (cin, cout) in enumerate([(1, width), (width, width), (width, width)], 1):
                self.add_module(f"conv{i}", nn.Conv2d(cin, cout, 3, padding=1, bias=False))
                self.add_module(f"bn{i}", nn.BatchNorm2d(cout))
                self.add_module(f"relu{i}", nn.ReLU())
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(width, 4)

        def forward(self, x):
            for i in (1, 2, 3):
                x = getattr(self, f"relu{i}")(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
            return self.fc(self.pool(x).flatten(1))

    return Net()


class _Stop(Exception):
    """Simulates a kill after a given global step."""


def _case(
    root: Path, mode: str, world: int, method: str, quantizer: str, params: dict, distributed: str = "ddp"
) -> tuple[dict, object]:
    import numpy as np
    import torch

    import qdistill
    from qdistill.data import BatchLoader, ImageSet
    from qdistill.distill.ensemble import TeacherEnsemble
    from qdistill.train.distributed import rank_and_world

    class Loader(BatchLoader):
        """The loader's float32 images in the default dtype (float64 for the float64 case)."""

        def _batch(self, *args):
            return super()._batch(*args).to(torch.get_default_dtype())

    rank, _ = rank_and_world()
    rng = np.random.default_rng(0)
    data = ImageSet((rng.random((24, 8, 8, 1)) * 255).astype(np.uint8), None)
    norm = {"mean": (0.5,), "std": (0.25,)}
    loader = Loader(
        data,
        8,
        **norm,
        augment="crop_flip",
        shuffle=True,
        drop_last=True,
        seed=3,
        with_labels=False,
        num_shards=world,
        shard=rank,
    )
    val = Loader(data.subset(np.arange(8)), 8, **norm, with_labels=False)
    torch.manual_seed(0)
    teachers = [_net(w).eval() for w in (6, 8)]
    calib = next(iter(Loader(data, 16, **norm, with_labels=False)))
    fixed = quantizer == "ewgs-fixed"
    qcfg = qdistill.QuantConfig(
        method=quantizer.split("-")[0], weight_bits=2, act_bits=2, **QUANT_EXTRA.get(quantizer, {})
    )
    student = qdistill.make_student(teachers[0], qcfg, calib)
    teacher = TeacherEnsemble(teachers) if method == "ekd" else teachers[0]
    objective = qdistill.build_objective(method, student, teacher, **params)
    cfg = train_config(distributed, ewgs_every=0 if fixed else 1)
    out = root / f"{method}-{quantizer}" / (f"part{3 - world}" if mode == "resume" else f"{mode}{world}")
    return train(objective, loader, cfg, val, out, mode)


def train_config(distributed: str, ewgs_every: int = 1):
    """Two epochs of SGD, a checkpoint every epoch, on the CPU in fp32: the same for every case."""
    import qdistill

    return qdistill.TrainConfig(
        epochs=2,
        optimizer="sgd",
        lr=0.05,
        progress=False,
        checkpoint_every=1,
        ewgs_every=ewgs_every,
        hessian_probes=1,
        device="cpu",
        amp="off",
        distributed=distributed,
    )


def train(objective, loader, cfg, val, out: Path, mode: str):
    """Fit (``part``: stopped after global step `STOP_AT`; ``resume``: continue ``out``); the mean loss
    of every step, the EWGS delta of every epoch, and the trainer."""
    import qdistill

    losses: list[float] = []

    class Record:
        def on_step_end(self, trainer, logs):
            losses.append(float(logs["loss"]))
            if mode == "part" and trainer.epoch * STEPS_PER_EPOCH + trainer.step == STOP_AT:
                raise _Stop

    trainer = qdistill.Trainer(objective, loader, cfg, val, out, callbacks=[Record()])
    try:
        history = trainer.fit(resume=mode == "resume")
    except _Stop:
        history = trainer.history
    return {"losses": losses, "delta": [row.get("ewgs_delta_mean") for row in history]}, trainer


def _fail(rank: int) -> None:
    """Rank 1 hits a user error at its second step while rank 0 waits for it in the gradient all-reduce."""
    import numpy as np

    import qdistill
    from qdistill.data import BatchLoader, ImageSet
    from qdistill.errors import DataError

    class Fail:
        def on_step_end(self, trainer, logs):
            if rank == 1 and trainer.step == 2:
                raise DataError("bad batch on rank 1")

    data = ImageSet((np.random.default_rng(0).random((16, 8, 8, 1)) * 255).astype(np.uint8), None)
    loader = BatchLoader(data, 4, mean=(0.5,), std=(0.25,), with_labels=False, num_shards=2, shard=rank)
    teacher = _net(4).eval()
    objective = qdistill.build_objective("sqakd", qdistill.make_student(teacher, None), teacher)
    cfg = qdistill.TrainConfig(epochs=1, progress=False, device="cpu", ewgs_every=0)
    try:
        qdistill.Trainer(objective, loader, cfg, callbacks=[Fail()]).fit()
    except DataError as e:  # what the command line does with a user error
        print(f"qdistill train: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _worker(out: str, mode: str) -> None:
    import torch

    from qdistill.train import distributed

    torch.set_num_threads(1)
    with distributed.process_group(timeout_s=60):
        rank, world = distributed.rank_and_world()
        if mode == "fail":
            return _fail(rank)
        if mode == "same-error":  # as a config error does: every rank fails alike, rank 0 is slower to exit
            print("qdistill train: error: the same on every rank", file=sys.stderr, flush=True)
            time.sleep(10 if rank == 0 else 0.5)
            raise SystemExit(2)
        results = {}
        for m, q, p in CASES:
            torch.set_default_dtype(torch.float64 if (m, q, p) == FLOAT64 else torch.float32)
            results[f"{m}-{q}"] = _case(Path(out).parent, mode, world, m, q, p)[0]
        if rank == 0:
            Path(out).write_text(json.dumps(results))


def launch_json(tmp_path: Path, mode: str, world: int, script: str = __file__) -> dict:
    """Run ``python SCRIPT OUT MODE`` in ``world`` processes; what rank 0 wrote to OUT."""
    from qdistill.train.distributed import launch

    out = tmp_path / f"{mode}{world}.json"
    assert launch([script, str(out), mode], world) == 0
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict]:
    tmp = tmp_path_factory.mktemp("ddp")
    one = launch_json(tmp, "full", 1)
    part1 = launch_json(tmp, "part", 1)
    two = launch_json(tmp, "full", 2)
    part2 = launch_json(tmp, "part", 2)
    resume2 = launch_json(tmp, "resume", 2)  # continues part1 (written by 1 process)
    resume1 = launch_json(tmp, "resume", 1)  # continues part2 (written by 2 processes)
    return {"full1": one, "full2": two, "part1": part1, "part2": part2, "resume1": resume1, "resume2": resume2}


@pytest.mark.parametrize("case", NAMES)
def test_two_processes_train_as_one(runs, case):
    one, two = runs["full1"][case], runs["full2"][case]
    loss_abs, delta_rel = (1e-14, 1e-12) if case == "-".join(FLOAT64[:2]) else (1e-6, 1e-5)
    assert len(one["losses"]) == len(two["losses"]) == 2 * STEPS_PER_EPOCH
    assert one["losses"] == pytest.approx(two["losses"], abs=loss_abs, rel=0)
    assert one["losses"][0] != pytest.approx(one["losses"][-1], rel=1e-4)  # it trained
    assert one["delta"] == pytest.approx(two["delta"], rel=delta_rel)  # EWGS: Hessian trace of the global batch


@pytest.mark.parametrize("case", NAMES)
def test_resume_under_another_world_size(runs, case):
    full = runs["full1"][case]["losses"]
    for written, resumed in (("part2", "resume1"), ("part1", "resume2")):
        assert runs[written][case]["losses"] == pytest.approx(full[:STOP_AT], abs=1e-6, rel=0)
        assert runs[resumed][case]["losses"] == pytest.approx(full[STOP_AT - 1 :], abs=1e-6, rel=0)


def test_one_failing_rank_stops_all_with_one_message(tmp_path, capfd):
    from qdistill.train.distributed import launch

    start = time.monotonic()
    assert launch([__file__, str(tmp_path / "x.json"), "fail"], 2) == 2
    assert time.monotonic() - start < 40  # no hang (rank 0 was blocked in a collective)
    err = capfd.readouterr().err
    assert err.count("bad batch on rank 1") == 1 and "Traceback" not in err and "another process" not in err


def test_the_same_error_on_every_rank_is_shown_once(tmp_path, capfd):
    from qdistill.train.distributed import launch

    assert launch([__file__, str(tmp_path / "x.json"), "same-error"], 2) == 2
    err = capfd.readouterr().err
    assert err.count("the same on every rank") == 1, err


if __name__ == "__main__":
    _worker(*sys.argv[1:])

"""The callback protocol, the quantizer callbacks (compiled kernels, EWGS delta) and closing the objective."""

import pytest
import torch
from torch import nn

from qdistill.distill import build_objective
from qdistill.distill.kd import kd_loss
from qdistill.distill.objectives import SQAKD
from qdistill.distill.student import make_student
from qdistill.errors import DataError
from qdistill.quant import QuantConfig, named_quantizers
from qdistill.quant.callbacks import EWGSDeltaUpdate
from qdistill.quant.fake_quant import _COMPILED
from qdistill.train import Callback, TrainConfig, Trainer

FAST = {"progress": False, "hessian_probes": 1}


def _student(teacher, method="ewgs"):
    torch.manual_seed(3)
    return make_student(teacher, QuantConfig(method=method, weight_bits=2, act_bits=2), torch.randn(16, 1, 8, 8))


def _batches(n=2):
    return list(torch.randn(n * 8, 1, 8, 8, generator=torch.Generator().manual_seed(0)).split(8))


class Recorder(Callback):
    def __init__(self):
        self.events = []

    def on_fit_start(self, trainer):
        self.events.append("fit_start")

    def on_epoch_start(self, trainer, row):
        self.events.append(f"epoch_start {row['epoch']}")
        row["mine"] = 1.5  # a callback's own metric is logged with the epoch

    def on_step_end(self, trainer, logs):
        self.events.append(f"step {trainer.step} loss={'loss' in logs}")

    def on_epoch_end(self, trainer, row):
        self.events.append(f"epoch_end {row['epoch']} val={'val_agreement' in row}")

    def on_fit_end(self, trainer):
        self.events.append("fit_end")


def test_events_arrive_in_order_with_the_metrics(teacher, tmp_path):
    rec = Recorder()
    cfg = TrainConfig(epochs=2, ewgs_every=0, **FAST)
    trainer = Trainer(
        build_objective("sqakd", _student(teacher), teacher), _batches(), cfg, _batches(1), tmp_path, callbacks=[rec]
    )
    trainer.fit()
    assert rec.events == [
        "fit_start",
        "epoch_start 1",
        "step 1 loss=True",
        "step 2 loss=True",
        "epoch_end 1 val=True",
        "epoch_start 2",
        "step 1 loss=True",
        "step 2 loss=True",
        "epoch_end 2 val=True",
        "fit_end",
    ]
    assert '"mine": 1.5' in (tmp_path / "metrics.json").read_text()


class ClosingSQAKD(SQAKD):
    closed = 0

    def close(self):
        self.closed += 1


def test_fit_end_and_objective_close_run_also_when_training_fails(teacher):
    for data, error in ((_batches(), None), ([(b, torch.zeros(8, dtype=torch.long)) for b in _batches()], DataError)):
        rec, objective = Recorder(), ClosingSQAKD(_student(teacher), teacher)
        trainer = Trainer(objective, data, TrainConfig(epochs=1, ewgs_every=0, **FAST), callbacks=[rec])
        if error is None:
            trainer.fit()
        else:
            with pytest.raises(error):
                trainer.fit()
        assert rec.events[-1] == "fit_end" and objective.closed == 1


def test_compiled_kernels_run_during_fit_and_the_switch_is_restored(teacher):
    seen = []

    class Probe(Callback):
        def on_step_end(self, trainer, logs):
            seen.append((bool(_COMPILED), float(logs["loss"])))

    def run(compiled):
        cfg = TrainConfig(epochs=1, max_steps=2, ewgs_every=0, compile_quantizers=compiled, **FAST)
        Trainer(build_objective("sqakd", _student(teacher), teacher), _batches(), cfg, callbacks=[Probe()]).fit()

    assert not _COMPILED
    run(False)
    run(True)
    assert [s[0] for s in seen] == [False, False, True, True]
    assert seen[2][1] == pytest.approx(seen[0][1], rel=1e-5) and seen[3][1] == pytest.approx(seen[1][1], rel=1e-5)
    assert not _COMPILED  # back to eager after fit


class QueueKD(SQAKD):
    """An objective with its own BatchNorm and a queue (a buffer replaced) and a pointer (updated in place)."""

    def __init__(self, student, teacher):
        super().__init__(student, teacher)
        self.bn = nn.BatchNorm1d(3)
        self.register_buffer("queue", torch.zeros(4, 3))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    def forward(self, images, labels=None):
        logits = self.bn(self.student(images))
        with torch.no_grad():
            self.queue = torch.cat([self.queue[1:], logits[:1].detach()])
            self.ptr += 1
        loss = kd_loss(logits, self.teacher_logits(images), self.temperature)
        return loss, {}


def _buffers(*modules):
    return {f"{i}.{n}": b.clone() for i, m in enumerate(modules) for n, b in m.named_buffers() if "coef" not in n}


def test_ewgs_delta_estimate_leaves_student_and_objective_buffers_untouched(teacher):
    objective = QueueKD(_student(teacher), teacher)
    trainer = Trainer(objective, _batches(), TrainConfig(epochs=1, **FAST))
    before = _buffers(objective.student, objective)
    deltas = {n: float(q.coef) for n, q in named_quantizers(objective.student)}
    row = {}
    EWGSDeltaUpdate(every=1).on_epoch_start(trainer, row)
    after = _buffers(objective.student, objective)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert objective.queue is not None and int(objective.ptr) == 0
    assert "ewgs_delta_mean" in row
    assert any(float(q.coef) != deltas[n] for n, q in named_quantizers(objective.student))
    objective.train()
    objective(_batches()[0])  # control: a training forward does change them
    changed = _buffers(objective.student, objective)
    assert not torch.equal(changed["1.queue"], before["1.queue"]) and not torch.equal(
        changed["1.bn.running_mean"], before["1.bn.running_mean"]
    )


def test_ewgs_update_runs_every_n_epochs_only(teacher):
    hist = Trainer(
        build_objective("sqakd", _student(teacher), teacher), _batches(), TrainConfig(epochs=3, ewgs_every=2, **FAST)
    ).fit()
    assert ["ewgs_delta_mean" in r for r in hist] == [True, False, True]
    lsq = Trainer(
        build_objective("sqakd", _student(teacher, "lsq"), teacher), _batches(), TrainConfig(epochs=1, **FAST)
    )
    assert "ewgs_delta_mean" not in lsq.fit()[0]  # no EWGS-backward quantizer: nothing to update

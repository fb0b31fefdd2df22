"""train.compile / train.channels_last (qdistill/train/compile.py): the fast step against the eager reference."""

import copy

import pytest
import torch

from qdistill.distill import build_objective
from qdistill.distill.student import make_student
from qdistill.errors import ConfigError
from qdistill.quant import QuantConfig
from qdistill.train import Callback, TrainConfig, Trainer
from qdistill.train.compile import FastStep, fast_step_callbacks


class StepLog(Callback):
    """Each step's loss and the gradients the optimizer stepped with (still set at on_step_end)."""

    def __init__(self):
        self.losses, self.grads, self.deltas = [], [], []

    def on_step_end(self, trainer, logs):
        self.losses.append(float(logs["loss"]))
        self.grads.append([p.grad.clone() for p in trainer.student.parameters() if p.grad is not None])

    def on_epoch_end(self, trainer, row):
        self.deltas.append(row.get("ewgs_delta_mean"))


def _batches(n=3):
    return list(torch.randn(n * 8, 1, 8, 8, generator=torch.Generator().manual_seed(0)).split(8))


def _fit(teacher, student, epochs=2, ewgs_every=0, **fast):
    log = StepLog()
    cfg = TrainConfig(epochs=epochs, ewgs_every=ewgs_every, progress=False, hessian_probes=1, seed=1, **fast)
    objective = build_objective("sqakd", student, teacher)
    Trainer(objective, _batches(), cfg, callbacks=[log]).fit()
    return log, objective


def _student(teacher, backward):
    torch.manual_seed(3)
    q = QuantConfig(method="ewgs", weight_bits=2, act_bits=2, backward=backward, backward_coef=0.05)
    return make_student(teacher, q, torch.randn(16, 1, 8, 8))


def _assert_same(eager, fast, atol):
    assert len(fast.losses) == len(eager.losses) == 6
    assert fast.losses == pytest.approx(eager.losses, abs=atol, rel=0)
    for g_eager, g_fast in zip(eager.grads, fast.grads):
        assert len(g_fast) == len(g_eager) > 0
        assert all(torch.allclose(a, b, rtol=0, atol=atol) for a, b in zip(g_eager, g_fast))


@pytest.mark.parametrize("backward", ["ste", "ewgs"])
def test_compiled_step_gives_the_eager_losses_and_gradients(teacher, backward):
    student = _student(teacher, backward)
    ewgs_every = 1 if backward == "ewgs" else 0  # the Hessian pass (double backward) runs eager inside a compiled fit
    eager, _ = _fit(teacher, copy.deepcopy(student), ewgs_every=ewgs_every)
    torch._dynamo.reset()
    fast, _ = _fit(teacher, student, ewgs_every=ewgs_every, compile=True, compile_backend="aot_eager")
    _assert_same(eager, fast, atol=1e-6)
    assert eager.losses[0] != eager.losses[-1]  # the weights moved: later steps compare trained states
    if backward == "ewgs":
        assert None not in eager.deltas and fast.deltas == pytest.approx(eager.deltas, rel=1e-5)


def test_compiled_step_under_bf16_autocast_gives_the_eager_losses(teacher):
    student = _student(teacher, "ste")  # fake-quant math stays fp32 inside the compiled graph too
    eager, _ = _fit(teacher, copy.deepcopy(student), amp="bf16")
    torch._dynamo.reset()
    fast, _ = _fit(teacher, student, amp="bf16", compile=True, compile_backend="aot_eager")
    _assert_same(eager, fast, atol=1e-6)


@pytest.mark.slow
def test_inductor_step_gives_the_eager_losses_and_gradients(teacher):
    student = _student(teacher, "ewgs")
    eager, _ = _fit(teacher, copy.deepcopy(student))
    torch._dynamo.reset()
    fast, _ = _fit(teacher, student, compile=True)
    _assert_same(eager, fast, atol=1e-5)


def test_the_objective_forward_is_one_graph_and_is_restored_after_fit(teacher):
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    _, objective = _fit(teacher, _student(teacher, "ste"), epochs=1, compile=True, compile_backend="aot_eager")
    # one graph: student, teacher, loss and its logs (tensors: no float() to break it)
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
    assert "forward" not in vars(objective)


def test_channels_last_gives_the_eager_losses_and_is_undone(teacher):
    student = _student(teacher, "ste")
    eager, _ = _fit(teacher, copy.deepcopy(student))
    seen = []

    class Formats(Callback):
        def on_step_end(self, trainer, logs):
            seen.append(trainer.student.conv2.weight.is_contiguous(memory_format=torch.channels_last))

    cfg = TrainConfig(epochs=2, ewgs_every=0, progress=False, seed=1, channels_last=True)
    log = StepLog()
    Trainer(build_objective("sqakd", student, teacher), _batches(), cfg, callbacks=[log, Formats()]).fit()
    _assert_same(eager, log, atol=1e-5)
    assert all(seen) and student.conv2.weight.is_contiguous() and teacher.conv2.weight.is_contiguous()


def test_the_forward_is_restored_when_training_fails(teacher):
    objective = build_objective("sqakd", _student(teacher, "ste"), teacher)

    class Boom(Callback):
        def on_step_end(self, trainer, logs):
            raise RuntimeError("boom")

    cfg = TrainConfig(epochs=1, ewgs_every=0, progress=False, compile=True, compile_backend="aot_eager")
    with pytest.raises(RuntimeError, match="boom"):
        Trainer(objective, _batches(), cfg, callbacks=[Boom()]).fit()
    assert "forward" not in vars(objective)


def test_config_switches():
    assert fast_step_callbacks(TrainConfig()) == []
    (cb,) = fast_step_callbacks(TrainConfig(compile=True, compile_mode="max-autotune"))
    assert isinstance(cb, FastStep) and cb.compile and cb.mode == "max-autotune" and not cb.channels_last
    with pytest.raises(ConfigError, match="train.compile_mode"):
        TrainConfig.from_dict({"compile": True, "compile_mode": "fastest"})
    with pytest.raises(ConfigError, match="train.channels_last"):
        TrainConfig.from_dict({"channels_last": "yes"})

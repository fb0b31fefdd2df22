import json

import numpy as np
import pytest
import torch

from qdistill.data import ImageSet
from qdistill.distill import build_objective
from qdistill.distill.student import make_student
from qdistill.errors import DataError, DivergedError
from qdistill.quant import QuantConfig, named_quantizers
from qdistill.train import CheckpointError, TrainConfig, Trainer, load_checkpoint, save_checkpoint
from qdistill.train.trainer import param_groups

FAST = {"progress": False, "hessian_probes": 1}


class ExplodingLabels(np.ndarray):
    """A label array that fails on any read: proves a code path never looks at labels."""

    def __getitem__(self, item):
        raise AssertionError("labels were read")

    def __array__(self, *a, **k):
        raise AssertionError("labels were read")


def _student(teacher, images, method="ewgs"):
    calib = torch.randn(16, 1, 8, 8)
    return make_student(teacher, QuantConfig(method=method, weight_bits=2, act_bits=2), calib)


def test_sqakd_trains_label_free(teacher, tiny_images, make_loader, tmp_path):
    student = _student(teacher, tiny_images)
    objective = build_objective("sqakd", student, teacher)
    loader = make_loader(ImageSet(tiny_images.images, None), labels=False)
    val = make_loader(ImageSet(tiny_images.images[:32], None), labels=False, shuffle=False)
    hist = Trainer(objective, loader, TrainConfig(epochs=2, **FAST), val, tmp_path).fit()
    assert hist[-1]["train_kd"] < hist[0]["train_kd"] * 1.5 and "val_agreement" in hist[-1]
    assert "val_top1" not in hist[-1]


def test_label_free_loader_never_touches_labels(tiny_images, make_loader):
    exploding = tiny_images.labels.view(ExplodingLabels)
    data = ImageSet.__new__(ImageSet)
    object.__setattr__(data, "images", tiny_images.images)
    object.__setattr__(data, "labels", exploding)
    object.__setattr__(data, "classes", None)
    from qdistill.data import BatchLoader

    loader = BatchLoader(data, 32, mean=(0.3,), std=(0.3,), shuffle=True, with_labels=False)
    assert all(isinstance(b, torch.Tensor) for b in loader)


def test_label_free_method_refuses_labelled_batches(teacher, tiny_images, make_loader):
    objective = build_objective("sqakd", _student(teacher, tiny_images), teacher)
    trainer = Trainer(objective, make_loader(tiny_images, labels=True), TrainConfig(epochs=1, **FAST))
    with pytest.raises(DataError, match="label-free"):
        trainer.fit()


def test_teacher_is_frozen_and_not_in_optimizer_or_checkpoint(teacher, tiny_images, make_loader, tmp_path):
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    objective = build_objective("sqakd", _student(teacher, tiny_images), teacher)
    trainer = Trainer(
        objective, make_loader(tiny_images, labels=False), TrainConfig(epochs=1, **FAST), out_dir=tmp_path
    )
    trainer.fit()
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    opt_ids = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not opt_ids & {id(p) for p in teacher.parameters()}
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["objective"] == {} or not any("teacher" in k for k in state["objective"])
    assert set(state["student"]) == set(objective.student.state_dict())


def test_quantizer_params_have_own_lr_and_no_weight_decay(teacher, tiny_images):
    objective = build_objective("sqakd", _student(teacher, tiny_images), teacher)
    groups = param_groups(objective, TrainConfig(lr=0.1, quant_lr=0.01, weight_decay=5e-4))
    assert groups[1]["lr"] == 0.01 and groups[1]["weight_decay"] == 0.0 and groups[0]["weight_decay"] == 5e-4
    quant_params = {id(p) for _, q in named_quantizers(objective.student) for p in q.parameters()}
    assert {id(p) for p in groups[1]["params"]} == quant_params


def test_ewgs_delta_changes_during_training(teacher, tiny_images, make_loader):
    student = _student(teacher, tiny_images)
    objective = build_objective("sqakd", student, teacher)
    initial = {n: float(q.coef) for n, q in named_quantizers(student)}
    hist = Trainer(objective, make_loader(tiny_images, labels=False), TrainConfig(epochs=2, ewgs_every=1, **FAST)).fit()
    after = {n: float(q.coef) for n, q in named_quantizers(student)}
    assert any(abs(after[n] - initial[n]) > 1e-9 for n in initial)
    assert "ewgs_delta_mean" in hist[0]


def test_supervised_baselines_train(teacher, tiny_images, make_loader):
    for name in ("qat", "ce_kd"):
        objective = build_objective(name, _student(teacher, tiny_images, "lsq"), teacher)
        hist = Trainer(
            objective,
            make_loader(tiny_images, labels=True),
            TrainConfig(epochs=2, lr=1e-2, **FAST),
            make_loader(tiny_images, labels=True, shuffle=False),
        ).fit()
        assert "val_top1" in hist[-1] and "train_ce" in hist[-1]


def test_resume_is_exact(teacher, tiny_images, make_loader, tmp_path):
    def trainer_for(out):
        torch.manual_seed(123)
        objective = build_objective("sqakd", _student(teacher, tiny_images), teacher)
        cfg = TrainConfig(epochs=3, warmup_epochs=1, **FAST)
        return Trainer(objective, make_loader(tiny_images, labels=False), cfg, out_dir=out)

    full = trainer_for(tmp_path / "a")
    full.fit()
    _interrupt_after(trainer_for(tmp_path / "b"), epochs=1)
    resumed = trainer_for(tmp_path / "b")
    resumed.fit(resume=True)
    a, b = full.student.state_dict(), resumed.student.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2, 3]


def _interrupt_after(trainer: Trainer, epochs: int) -> None:
    """Run the real fit loop but stop after `epochs` epochs, as a kill would."""
    original = trainer.train_epoch
    done = []

    def limited():
        if len(done) == epochs:
            raise KeyboardInterrupt
        done.append(1)
        return original()

    trainer.train_epoch = limited
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()


def test_nan_loss_stops_with_clear_error(teacher, tiny_images, make_loader):
    objective = build_objective("sqakd", _student(teacher, tiny_images), teacher)
    with torch.no_grad():
        objective.student.fc.weight.fill_(float("nan"))
    with pytest.raises(DivergedError, match="epoch 1, step 1: loss is nan"):
        Trainer(objective, make_loader(tiny_images, labels=False), TrainConfig(epochs=1, **FAST)).fit()


def test_checkpoint_is_atomic_and_corrupt_files_are_reported(tmp_path):
    path = save_checkpoint({"x": torch.ones(2)}, tmp_path / "c.pt")
    assert load_checkpoint(path)["x"].sum() == 2
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"a": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a qdistill checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


@pytest.mark.parametrize(
    "kwargs, msg",
    [
        ({"epochs": 0}, "epochs"),
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"amp": "fp8"}, "amp"),
        ({"warmup_epochs": 5, "epochs": 2}, "warmup"),
    ],
)
def test_train_config_validation(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        TrainConfig(**kwargs)


def test_metrics_written_to_csv_json_and_tensorboard(teacher, tiny_images, make_loader, tmp_path):
    pytest.importorskip("tensorboard")
    objective = build_objective("sqakd", _student(teacher, tiny_images), teacher)
    cfg = TrainConfig(epochs=2, tensorboard=True, **FAST)
    Trainer(objective, make_loader(tiny_images, labels=False), cfg, out_dir=tmp_path).fit()
    rows = json.loads((tmp_path / "metrics.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2]
    assert (tmp_path / "metrics.csv").read_text().startswith("epoch,")
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))

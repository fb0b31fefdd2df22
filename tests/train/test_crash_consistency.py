"""A kill between the last.pt and best.pt writes, stale tmp files and incomplete last.pt files."""

from pathlib import Path

import pytest
import torch

from qdistill.distill import build_objective
from qdistill.distill.student import make_student
from qdistill.errors import CheckpointError
from qdistill.quant import QuantConfig
from qdistill.train import Callback, TrainConfig, Trainer, load_checkpoint, save_checkpoint
from qdistill.train import trainer as trainer_mod

FAST = {"progress": False, "hessian_probes": 1}


def _trainer(teacher, loader, out, epochs=2, val=None):
    torch.manual_seed(7)
    student = make_student(teacher, QuantConfig(method="ewgs", weight_bits=2, act_bits=2), torch.randn(16, 1, 8, 8))
    return Trainer(build_objective("sqakd", student, teacher), loader, TrainConfig(epochs=epochs, **FAST), val, out)


def test_kill_between_last_and_best_write_resumes_to_the_uninterrupted_result(
    teacher, tiny_images, make_loader, tmp_path, monkeypatch
):
    data = tiny_images.without_labels()
    full = _trainer(teacher, make_loader(data, labels=False), tmp_path / "full")
    full.fit()

    real_save, killed = save_checkpoint, []

    def kill_at_second_best(state, path):
        if Path(path).name == "best.pt" and state["epoch"] == 2 and not killed:
            killed.append(path)
            raise KeyboardInterrupt  # last.pt of epoch 2 is already on disk
        return real_save(state, path)

    monkeypatch.setattr(trainer_mod, "save_checkpoint", kill_at_second_best)
    with pytest.raises(KeyboardInterrupt):
        _trainer(teacher, make_loader(data, labels=False), tmp_path / "killed").fit()
    assert killed and load_checkpoint(tmp_path / "killed" / "best.pt")["epoch"] == 1  # stale, as after a kill

    resumed = _trainer(teacher, make_loader(data, labels=False), tmp_path / "killed")
    resumed.fit(resume=True)
    a, b = (load_checkpoint(tmp_path / d / "best.pt") for d in ("full", "killed"))
    assert a["epoch"] == b["epoch"] == 2
    assert a["student"].keys() == b["student"].keys()
    assert all(torch.equal(a["student"][k], b["student"][k]) for k in a["student"])
    final_a, final_b = full.student.state_dict(), resumed.student.state_dict()
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)


class Snapshots(Callback):
    """The student's weights at the end of every epoch."""

    def __init__(self):
        self.weights = []

    def on_epoch_end(self, trainer, row):
        self.weights.append({k: v.clone() for k, v in trainer.student.state_dict().items()})


def test_fit_ends_with_the_best_epoch_weights_not_the_last(teacher, tiny_images, make_loader, tmp_path):
    data = tiny_images.without_labels()
    trainer = _trainer(
        teacher, make_loader(data, labels=False), tmp_path, epochs=3, val=make_loader(data, labels=False, shuffle=False)
    )
    scores = iter([80.0, 95.0, 90.0])  # epoch 2 is the best
    trainer.validate = lambda: {"val_agreement": next(scores)}
    snapshots = Snapshots()
    trainer.callbacks.append(snapshots)
    trainer.fit()
    after_epoch = snapshots.weights
    best, final = after_epoch[1], trainer.student.state_dict()
    assert all(torch.equal(best[k], final[k]) for k in best)
    assert not all(torch.equal(after_epoch[2][k], final[k]) for k in final)
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 2
    last = load_checkpoint(tmp_path / "last.pt")
    assert last["best"]["epoch"] == 2 and all(torch.equal(last["student"][k], after_epoch[2][k]) for k in final)


def test_stale_tmp_files_are_removed_when_training_starts(teacher, tiny_images, make_loader, tmp_path):
    tmp_path.joinpath("last.pt.k3j2.tmp").write_bytes(b"x" * 100)
    _trainer(teacher, make_loader(tiny_images.without_labels(), labels=False), tmp_path, epochs=1).fit()
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".pt", ".tmp")) == ["best.pt", "last.pt"]


def test_last_pt_without_student_is_a_checkpoint_error(teacher, tiny_images, make_loader, tmp_path):
    save_checkpoint({"epoch": 1, "step": 0}, tmp_path / "last.pt")
    trainer = _trainer(teacher, make_loader(tiny_images.without_labels(), labels=False), tmp_path)
    with pytest.raises(CheckpointError, match=r"last\.pt lacks .*student"):
        trainer.fit(resume=True)

"""Checkpoints: safe loading (no code runs), atomic writes that survive interruption, stale tmp files."""

import random

import numpy as np
import pytest
import torch

from qdistill.errors import CheckpointError, DivergedError, MissingFileError
from qdistill.train import checkpoint as ckpt
from qdistill.train.checkpoint import load_checkpoint, remove_stale_tmp, require_keys, save_checkpoint
from qdistill.train.trainer import _rng_state, _set_rng_state


class WritesMarker:
    """Unpickling this object would create ``path``: the proof that loading ran code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickled_object_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"format": ckpt.FORMAT, "student": {}, "evil": WritesMarker(marker)}, tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match="pickled objects .* refused"):
        load_checkpoint(tmp_path / "last.pt")
    assert not marker.exists()
    torch.load(tmp_path / "last.pt", weights_only=False)  # the file really carries the payload
    assert marker.exists()


def test_numpy_array_is_not_a_plain_type(tmp_path):
    torch.save({"format": ckpt.FORMAT, "rng": np.zeros(3)}, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(tmp_path / "c.pt")


def test_rng_state_survives_a_weights_only_round_trip(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's state
    save_checkpoint({"rng": _rng_state()}, tmp_path / "c.pt")
    expected = (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    _set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    assert (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist()) == expected


def test_missing_keys_are_one_line(tmp_path):
    with pytest.raises(CheckpointError, match=r"last\.pt lacks student, optimizer: not a complete"):
        require_keys({"epoch": 1}, ("epoch", "student", "optimizer"), tmp_path / "last.pt")
    with pytest.raises(MissingFileError, match="not found"):
        load_checkpoint(tmp_path / "nothing.pt")


def test_interrupted_write_keeps_old_file_and_leaves_no_tmp(tmp_path, monkeypatch):
    path = save_checkpoint({"x": torch.ones(3)}, tmp_path / "last.pt")
    real_save = torch.save

    def killed_mid_write(obj, f):
        real_save(obj, f)
        f.truncate(f.tell() // 2)  # half of the new bytes are on disk...
        raise KeyboardInterrupt  # ... when the process is interrupted

    monkeypatch.setattr(ckpt.torch, "save", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"x": torch.zeros(1000)}, path)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    assert torch.equal(load_checkpoint(path)["x"], torch.ones(3))


def test_stale_tmp_files_are_removed(tmp_path):
    (tmp_path / "last.pt.abc123.tmp").write_bytes(b"partial")
    (tmp_path / "best.pt.x.tmp").write_bytes(b"partial")
    keep = tmp_path / "notes.tmp"
    keep.write_text("not ours")
    assert [p.name for p in remove_stale_tmp(tmp_path)] == ["best.pt.x.tmp", "last.pt.abc123.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.tmp"]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_tensors_are_never_written(tmp_path, bad):
    state = {"student": {"fc.weight": torch.tensor([1.0, bad])}, "step": torch.tensor([3])}
    with pytest.raises(DivergedError, match=r"state\.student\.fc\.weight holds NaN or infinite"):
        save_checkpoint(state, tmp_path / "last.pt")
    assert list(tmp_path.iterdir()) == []


def test_objects_that_could_not_be_read_back_are_not_written(tmp_path):
    with pytest.raises(TypeError, match=r"state\.meta\.root is a PosixPath"):
        save_checkpoint({"meta": {"root": tmp_path}}, tmp_path / "c.pt")
    assert list(tmp_path.iterdir()) == []

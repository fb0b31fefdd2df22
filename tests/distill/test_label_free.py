"""Label-free methods must never read a label: they train from image-only loaders."""

import numpy as np
import pytest
import torch

from qdistill.data import BatchLoader, ImageSet
from qdistill.distill import build_objective
from qdistill.train import TrainConfig, Trainer

from .helpers import student_of

LABEL_FREE = ["sqakd", "squat", "gor", "ekd"]


class Poison:
    """A stand-in for labels that fails on any use."""

    def __getattr__(self, name):
        raise AssertionError(f"a label-free method read its labels ({name})")


@pytest.mark.parametrize("name", LABEL_FREE)
def test_label_free_methods_do_not_need_labels(teacher, batch, name):
    images, _ = batch
    objective = build_objective(name, student_of(teacher, images), teacher)
    assert objective.uses_labels is False
    loss, _ = objective(images, Poison())  # never touched
    assert torch.isfinite(loss)


@pytest.mark.parametrize("name", LABEL_FREE)
def test_label_free_methods_train_from_unlabelled_images(tmp_path, teacher, batch, name):
    rng = np.random.default_rng(0)
    unlabelled = ImageSet(rng.integers(0, 256, (48, 8, 8, 1), dtype=np.uint8), labels=None)
    loader = BatchLoader(unlabelled, 16, mean=[0.5], std=[0.25], shuffle=True, with_labels=False)
    objective = build_objective(name, student_of(teacher, batch[0], "ewgs"), teacher)
    history = Trainer(objective, loader, TrainConfig(epochs=2, progress=False), loader, tmp_path).fit()
    assert len(history) == 2 and "val_agreement" in history[-1]
    if name == "gor":
        assert "gor_w_feat" in history[-1]

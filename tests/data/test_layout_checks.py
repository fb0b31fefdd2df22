"""A dataset whose class list or split layout is not what its format promises is refused, not trained on."""

import pickle
import shutil

import numpy as np
import pytest

from qdistill.data import load_dataset
from qdistill.errors import ConfigError, DataError, MissingFileError


def load(fmt, root, tmp_path):
    return load_dataset(fmt, root, cache_dir=tmp_path / "cache")


def test_test_folder_without_train_is_refused(class_folder, tmp_path):
    # what a damaged archive used to leave: test/<class>/ only, read as one class called "test"
    shutil.rmtree(class_folder / "train")
    with pytest.raises(DataError, match=f"{class_folder} has test/ but no train/ folder"):
        load("imagefolder", class_folder, tmp_path)


def test_a_single_class_is_refused(class_folder, tmp_path):
    shutil.rmtree(class_folder / "train" / "dog")
    with pytest.raises(DataError, match=r"single class folder \(cat\).*'unlabelled'"):
        load("imagefolder", class_folder / "train", tmp_path)


def test_test_classes_must_equal_train_classes(class_folder, kit, tmp_path):
    shutil.rmtree(class_folder / "test" / "dog")
    with pytest.raises(DataError, match=f"{class_folder}/test lacks train classes: dog"):
        load("imagefolder", class_folder, tmp_path)
    kit.write_image(class_folder / "test" / "cow" / "0.png", kit.solid(1))
    with pytest.raises(DataError, match="has classes missing from train: cow; lacks train classes: dog"):
        load("imagefolder", class_folder, tmp_path)


def _repickle(path, key, value):
    with open(path, "rb") as f:
        obj = pickle.load(f)
    assert key in obj
    obj[key] = value
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def test_cifar10_needs_ten_class_names(cifar10_folder, tmp_path):
    _repickle(cifar10_folder / "batches.meta", b"label_names", [b"cat"] * 9)
    with pytest.raises(DataError, match="batches.meta names 9 classes; expected 10"):
        load("cifar10", cifar10_folder, tmp_path)


def test_cifar10_labels_must_be_0_to_9(cifar10_folder, tmp_path):
    _repickle(cifar10_folder / "data_batch_4", b"labels", [3, 10])
    with pytest.raises(DataError, match="data_batch_4 has labels 3..10; expected 0..9"):
        load("cifar10", cifar10_folder, tmp_path)


def test_cifar10_without_meta_still_has_ten_classes(cifar10_folder, tmp_path):
    (cifar10_folder / "batches.meta").unlink()
    data = load("cifar10", cifar10_folder, tmp_path)  # the fixture's labels only reach 6 in train
    assert data.num_classes == 10 and data.train.classes == tuple("0123456789")
    np.testing.assert_array_equal(data.test.labels, [0, 1, 9])


def test_errors_are_qdistill_errors_and_builtin_ones(tmp_path):
    with pytest.raises(ConfigError, match="unknown dataset format 'mnist'"):
        load_dataset("mnist", tmp_path)
    with pytest.raises(MissingFileError):
        load_dataset("idx", tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="takes no root"):
        load_dataset("digits", tmp_path)

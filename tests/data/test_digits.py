"""The bundled digits: the same arrays and split as scikit-learn's copy gave, without scikit-learn."""

import subprocess
import sys
from importlib import resources

import numpy as np
import pytest

from qdistill.data import load_dataset, readers, split_holdout
from qdistill.data.imageset import ImageSet

# per-class counts of the UCI optdigits test set (optdigits.names, "Class distribution", testing)
UCI_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def raw_digits():
    with resources.files("qdistill.data").joinpath(readers.DIGITS_FILE).open("rb") as f, np.load(f) as npz:
        return npz["images"], npz["labels"]


def test_bundled_file_holds_the_uci_test_set():
    images, labels = raw_digits()
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8 and images.max() == 16
    assert np.bincount(labels).tolist() == UCI_COUNTS
    assert images[0, 0].tolist() == [0, 0, 5, 13, 9, 1, 0, 0] and labels[0] == 0  # the well-known first "0"


def test_load_scales_to_0_255_and_splits_80_20():
    data = load_dataset("digits")
    assert (len(data.train), len(data.test)) == (1438, 359) and data.num_classes == 10
    assert np.bincount(np.concatenate([data.train.labels, data.test.labels])).tolist() == UCI_COUNTS
    # levels 0..16 map to round(v * 255 / 16): 5 -> 79.69 -> 80, 13 -> 207.19 -> 207, 9 -> 143.44 -> 143, 1 -> 16
    all_images = np.concatenate([data.train.images, data.test.images])[..., 0]
    assert sorted(np.unique(all_images).tolist())[:4] == [0, 16, 32, 48]
    assert any(img[0].tolist() == [0, 0, 80, 207, 143, 16, 0, 0] for img in all_images)


def test_same_arrays_and_split_as_scikit_learn():
    sk = pytest.importorskip("sklearn.datasets").load_digits()
    images, labels = raw_digits()
    np.testing.assert_array_equal(images, sk.images)
    np.testing.assert_array_equal(labels, sk.target)
    # the pre-bundling loader, spelled out: scale, then the same seeded stratified split
    old = ImageSet(np.round(sk.images * (255.0 / 16.0)).astype(np.uint8)[..., None], sk.target.astype(np.int64))
    old_train, old_test = split_holdout(old, 0.2, seed=0)
    data = load_dataset("digits")
    np.testing.assert_array_equal(data.train.images, old_train.images)
    np.testing.assert_array_equal(data.test.labels, old_test.labels)


def test_loading_digits_does_not_import_scikit_learn():
    code = "import sys, qdistill.data as d; d.load_dataset('digits'); print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"

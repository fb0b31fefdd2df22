"""Loads the real datasets in ../shared/data (skipped when absent)."""

import time
from pathlib import Path

import numpy as np
import pytest

from qdistill.data import BatchLoader, load_dataset

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
DATA = SHARED / "data"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not DATA.is_dir(), reason=f"real data not found at {DATA} (../shared beside the checkout)"),
]


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def test_fashion_mnist_idx(tmp_path):
    data, seconds = timed(load_dataset, "idx", DATA / "fashion-mnist", tmp_path / "cache")
    print(f"fashion-mnist: {seconds:.2f} s")
    assert data.train.images.shape == (60000, 28, 28, 1) and data.test.images.shape == (10000, 28, 28, 1)
    assert data.num_classes == 10 and data.augment == "crop"
    assert np.all(np.bincount(data.train.labels) == 6000) and np.all(np.bincount(data.test.labels) == 1000)
    assert data.mean[0] == pytest.approx(0.2860, abs=1e-3) and data.std[0] == pytest.approx(0.3530, abs=1e-3)
    x, y = next(iter(BatchLoader(data.train, 256, mean=data.mean, std=data.std, augment="crop", shuffle=True)))
    assert x.shape == (256, 1, 28, 28) and y.shape == (256,)


def test_cifar10_jpeg_archive_and_cache(tmp_path):
    archive, cache = DATA / "cifar10-jpeg.tar.gz", tmp_path / "cache"
    data, first = timed(load_dataset, "imagefolder", archive, cache)
    cached, second = timed(load_dataset, "imagefolder", archive, cache)
    print(f"cifar10-jpeg: first {first:.2f} s, cached {second:.2f} s")
    for d in (data, cached):
        assert d.train.images.shape == (50000, 32, 32, 3) and d.test.images.shape == (10000, 32, 32, 3)
        assert d.num_classes == 10 and d.train.classes == CIFAR10_CLASSES and d.augment == "crop_flip"
        assert np.all(np.bincount(d.train.labels) == 5000) and np.all(np.bincount(d.test.labels) == 1000)
    np.testing.assert_array_equal(cached.test.images, data.test.images)
    assert data.mean == pytest.approx((0.491, 0.482, 0.447), abs=2e-3)
    assert second < first

"""A format registered by the user with DATASET_FORMATS.register loads through load_dataset like a built-in one."""

import io

import numpy as np
import pytest

from qdistill.data import DATASET_FORMATS, DatasetFormat, ImageSet, list_formats, load_dataset


def load_npy_pair(source):
    """``images.npy`` (uint8 [N, H, W]) and ``labels.npy`` from the folder or archive; no test split."""
    images = np.load(io.BytesIO(source.read("images.npy")))
    labels = np.load(io.BytesIO(source.read("labels.npy")))
    return ImageSet(images, labels, ("dark", "light")), None


@pytest.fixture
def npy_format():
    name = "npy-pair-test"
    DATASET_FORMATS.register(name)(DatasetFormat(load_npy_pair, "images.npy + labels.npy", "crop", cache=True))
    yield name
    DATASET_FORMATS._items.pop(name)  # the registry has no public removal; keep other tests' view clean


def test_registered_format_loads_through_load_dataset(npy_format, tmp_path):
    root = tmp_path / "pairs"
    root.mkdir()
    images = np.concatenate([np.full((3, 4, 4), 51, np.uint8), np.full((3, 4, 4), 102, np.uint8)])
    np.save(root / "images.npy", images)
    np.save(root / "labels.npy", np.array([0, 0, 0, 1, 1, 1]))
    assert npy_format in list_formats()
    data = load_dataset(npy_format, root, cache_dir=tmp_path / "cache")
    assert data.train.image_shape == (4, 4, 1) and data.test is None
    assert data.num_classes == 2 and data.train.classes == ("dark", "light") and data.augment == "crop"
    # half the pixels at 51/255 = 0.2, half at 102/255 = 0.4: mean 0.3, std 0.1
    assert data.mean == pytest.approx((0.3,)) and data.std == pytest.approx((0.1,))
    assert len(list((tmp_path / "cache").glob(f"{npy_format}-*.npz"))) == 1  # cache=True is honoured
    with pytest.raises(FileNotFoundError, match="images.npy \\+ labels.npy"):
        load_dataset(npy_format, tmp_path / "missing")


def test_a_name_cannot_be_registered_twice(npy_format):
    with pytest.raises(ValueError, match="already registered"):
        DATASET_FORMATS.register(npy_format)(DatasetFormat(load_npy_pair, "x", "none"))

import pickle

import numpy as np
import pytest

from qdistill.data import DATASET_FORMATS, list_formats, load_dataset
from qdistill.data.formats import DatasetFormat

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)


def test_registry_lists_every_format():
    assert list_formats() == ["cifar10", "cifar100", "digits", "idx", "imagefolder", "unlabelled"]
    assert all(isinstance(DATASET_FORMATS.get(name), DatasetFormat) for name in list_formats())


def test_unknown_format_lists_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset format 'mnist'.*cifar10.*imagefolder"):
        load_dataset("mnist", tmp_path)


@pytest.mark.parametrize("fmt", ["idx", "cifar10", "imagefolder", "unlabelled"])
def test_missing_path_names_path_and_layout(tmp_path, fmt):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=f"{missing}.*expected") as info:
        load_dataset(fmt, missing)
    assert "\n" not in str(info.value)


def test_root_is_required_or_refused():
    with pytest.raises(ValueError, match="root="):
        load_dataset("idx")
    with pytest.raises(ValueError, match="takes no root"):
        load_dataset("digits", "/tmp")


def test_digits_split_is_stratified_and_deterministic():
    a, b = load_dataset("digits"), load_dataset("digits")
    assert a.train.image_shape == (8, 8, 1) and a.train.images.dtype == np.uint8
    assert len(a.train) + len(a.test) == 1797 and len(a.test) == 359
    assert a.num_classes == 10 and a.train.classes == tuple("0123456789") and a.augment == "none"
    assert a.train.images.max() == 255
    np.testing.assert_array_equal(a.test.images, b.test.images)
    frac = np.bincount(a.test.labels) / np.bincount(np.concatenate([a.train.labels, a.test.labels]))
    assert np.all(np.abs(frac - 0.2) < 0.02)
    assert len(a.mean) == 1 and 0 < a.mean[0] < 1


@pytest.mark.parametrize("where", ["folder", "parent", "archive"])
def test_cifar10_pickles(cifar10_folder, kit, tmp_path, where):
    root = {
        "folder": cifar10_folder,
        "parent": cifar10_folder.parent,
        "archive": kit.make_tar(cifar10_folder, tmp_path / "cifar-10-python.tar.gz"),
    }[where]
    data = load_dataset("cifar10", root, cache_dir=tmp_path / "cache")
    assert len(data.train) == 10 and len(data.test) == 3
    assert data.train.image_shape == (32, 32, 3) and data.num_classes == 10
    assert data.train.classes[0] == "airplane" and data.train.classes[-1] == "truck"
    np.testing.assert_array_equal(data.train.labels[:4], [1, 2, 2, 3])
    np.testing.assert_array_equal(data.test.labels, [0, 1, 9])
    # the CHW rows become HWC: every pixel of train image 0 (batch 1, offset 6) is (6, 7, 8)
    np.testing.assert_array_equal(data.train.images[0, 5, 7], [6, 7, 8])
    np.testing.assert_array_equal(data.test.images[2, 0, 0], [106, 107, 108])
    assert data.mean == CIFAR10_MEAN and data.augment == "crop_flip"


def test_cifar_mean_std_can_be_overridden(cifar10_folder):
    data = load_dataset("cifar10", cifar10_folder, mean=(0.485, 0.456, 0.406), std=[0.229, 0.224, 0.225])
    assert data.mean == (0.485, 0.456, 0.406) and data.std == (0.229, 0.224, 0.225)
    with pytest.raises(ValueError, match="one value per channel"):
        load_dataset("cifar10", cifar10_folder, mean=(0.5,))


def test_cifar100_uses_fine_labels(cifar100_folder):
    data = load_dataset("cifar100", cifar100_folder)
    assert data.num_classes == 100 and data.train.classes[99] == "c99"
    np.testing.assert_array_equal(data.train.labels, [0, 99, 5, 5])
    assert len(data.test) == 2 and data.mean[0] == pytest.approx(0.5071)


def test_cifar_missing_batch_is_named(cifar10_folder):
    (cifar10_folder / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        load_dataset("cifar10", cifar10_folder)


def test_cifar_corrupt_pickle_is_named(cifar10_folder):
    (cifar10_folder / "data_batch_2").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="data_batch_2"):
        load_dataset("cifar10", cifar10_folder)


class _Exploit:
    def __reduce__(self):
        return (print, ("pwned",))


def test_cifar_pickles_cannot_run_code(cifar10_folder, capsys):
    (cifar10_folder / "test_batch").write_bytes(pickle.dumps({b"data": _Exploit(), b"labels": []}))
    with pytest.raises(ValueError, match="refusing to load global builtins.print"):
        load_dataset("cifar10", cifar10_folder)
    assert "pwned" not in capsys.readouterr().out


@pytest.mark.parametrize("gz, tar", [(False, False), (True, False), (True, True)])
def test_idx_files(idx_folder, kit, tmp_path, gz, tar):
    root = idx_folder(gz=gz)
    data = load_dataset("idx", kit.make_tar(root, tmp_path / "mnist.tar") if tar else root)
    assert data.train.images.shape == (6, 4, 5, 1) and data.test.images.shape == (4, 4, 5, 1)
    np.testing.assert_array_equal(data.train.labels, [0, 1, 2, 0, 1, 2])
    assert data.num_classes == 3 and data.augment == "crop" and data.train.classes is None
    assert len(data.mean) == 1


def test_idx_raw_and_gz_agree_and_test_is_optional(idx_folder):
    raw, gz = load_dataset("idx", idx_folder()), load_dataset("idx", idx_folder(gz=True))
    np.testing.assert_array_equal(raw.train.images, gz.train.images)
    assert load_dataset("idx", idx_folder(test=False)).test is None


def test_idx_bad_magic_names_the_file(idx_folder, kit):
    root = idx_folder()
    kit.write_idx(root / "train-images-idx3-ubyte", np.zeros((6, 4, 5)), magic=0x0D03)
    with pytest.raises(ValueError, match="train-images-idx3-ubyte: bad IDX magic number 0x00000D03"):
        load_dataset("idx", root)


def test_idx_size_mismatch_and_count_mismatch(idx_folder, kit):
    root = idx_folder()
    path = root / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.*do not match"):
        load_dataset("idx", root)
    root = idx_folder(gz=True)
    kit.write_idx(root / "train-labels-idx1-ubyte.gz", np.zeros(5))
    with pytest.raises(ValueError, match="5 labels for 6 images"):
        load_dataset("idx", root)


def test_idx_corrupt_gzip_and_missing_labels(idx_folder):
    root = idx_folder(gz=True)
    (root / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8bgarbage")
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz: corrupt gzip"):
        load_dataset("idx", root)
    (root / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_dataset("idx", root)

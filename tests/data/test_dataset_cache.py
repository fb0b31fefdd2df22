import os

import numpy as np
import pytest

from qdistill.data import folders, load_dataset


def fail_to_decode(*args, **kwargs):
    raise AssertionError("decoded again instead of using the cache")


def test_second_load_hits_the_cache(class_folder, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = load_dataset("imagefolder", class_folder, cache)
    files = os.listdir(cache)
    assert len(files) == 1 and files[0].startswith("imagefolder-pets-") and files[0].endswith(".npz")
    monkeypatch.setattr(folders, "decode_images", fail_to_decode)
    second = load_dataset("imagefolder", class_folder, cache)
    np.testing.assert_array_equal(second.train.images, first.train.images)
    np.testing.assert_array_equal(second.test.labels, first.test.labels)
    assert second.train.classes == first.train.classes and second.num_classes == 2
    assert (second.mean, second.std, second.augment) == (first.mean, first.std, first.augment)
    override = load_dataset("imagefolder", class_folder, cache, mean=(0.5,) * 3, std=(0.25,) * 3)
    assert override.mean == (0.5,) * 3 and override.std == (0.25,) * 3


def test_unlabelled_and_archive_caches(class_folder, kit, tmp_path, monkeypatch):
    tar = kit.make_tar(class_folder, tmp_path / "pets.tgz")
    first = load_dataset("unlabelled", tar, tmp_path / "cache")
    monkeypatch.setattr(folders, "decode_images", fail_to_decode)
    second = load_dataset("unlabelled", tar, tmp_path / "cache")
    assert second.train.labels is None and second.test is None and second.train.classes is None
    np.testing.assert_array_equal(second.train.images, first.train.images)


def test_a_changed_folder_is_decoded_again(class_folder, kit, tmp_path):
    cache = tmp_path / "cache"
    assert len(load_dataset("imagefolder", class_folder, cache).train) == 6
    kit.write_image(class_folder / "train" / "cat" / "new.png", kit.solid(3))
    assert len(load_dataset("imagefolder", class_folder, cache).train) == 7
    assert len(os.listdir(cache)) == 2


def test_env_var_sets_the_default_cache_dir(class_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("QDISTILL_CACHE", str(tmp_path / "envcache"))
    load_dataset("imagefolder", class_folder)
    assert len(list((tmp_path / "envcache").glob("imagefolder-*.npz"))) == 1


def test_corrupt_cache_is_ignored_and_rewritten(class_folder, tmp_path):
    cache = tmp_path / "cache"
    load_dataset("imagefolder", class_folder, cache)
    (file,) = cache.iterdir()
    file.write_bytes(b"truncated")
    with pytest.warns(UserWarning, match="ignoring unreadable dataset cache"):
        data = load_dataset("imagefolder", class_folder, cache)
    assert len(data.train) == 6 and file.stat().st_size > 1000


def test_unwritable_cache_only_warns(class_folder, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    with pytest.warns(UserWarning, match="could not write dataset cache"):
        data = load_dataset("imagefolder", class_folder, blocker / "cache")
    assert len(data.train) == 6


def test_no_temporary_files_are_left(class_folder, tmp_path):
    cache = tmp_path / "cache"
    load_dataset("imagefolder", class_folder, cache)
    assert [p.suffix for p in cache.iterdir()] == [".npz"]

import os
import shutil

import numpy as np
import pytest

from qdistill.data import cache, folders, load_dataset


def fail_to_decode(*args, **kwargs):
    raise AssertionError("decoded again instead of using the cache")


def test_second_load_hits_the_cache(class_folder, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = load_dataset("imagefolder", class_folder, cache)
    files = os.listdir(cache)
    assert len(files) == 1 and files[0].startswith("imagefolder-") and files[0].endswith(".npz")
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


def test_one_archive_at_two_paths_shares_one_entry(class_folder, kit, tmp_path, monkeypatch):
    archive = kit.make_tar(class_folder, tmp_path / "pets.tar.gz")
    store = tmp_path / "cache"
    first = load_dataset("imagefolder", archive, store)
    copy = tmp_path / "elsewhere" / "renamed.tgz"
    copy.parent.mkdir()
    shutil.copy(archive, copy)  # a new path, name and mtime; the same bytes
    os.utime(copy, ns=(1, 1))
    monkeypatch.setattr(folders, "decode_images", fail_to_decode)
    second = load_dataset("imagefolder", copy, store)
    np.testing.assert_array_equal(second.train.images, first.train.images)
    assert len(os.listdir(store)) == 1


def test_an_archive_with_new_content_is_decoded_again(class_folder, kit, tmp_path):
    store = tmp_path / "cache"
    archive = kit.make_tar(class_folder, tmp_path / "pets.tar")
    stat = archive.stat()
    load_dataset("imagefolder", archive, store)
    kit.write_image(class_folder / "train" / "cat" / "0000.png", kit.solid(77))  # same size, other pixels
    kit.make_tar(class_folder, archive)
    os.utime(archive, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with the old mtime
    data = load_dataset("imagefolder", archive, store)
    assert data.train.images[0, 0, 0, 0] == 77 and len(os.listdir(store)) == 2


def test_a_moved_folder_keeps_its_entry(class_folder, tmp_path, monkeypatch):
    store = tmp_path / "cache"
    load_dataset("imagefolder", class_folder, store)
    moved = shutil.copytree(class_folder, tmp_path / "moved" / "pets2")  # copy2 keeps sizes and mtimes
    monkeypatch.setattr(folders, "decode_images", fail_to_decode)
    assert len(load_dataset("imagefolder", moved, store).train) == 6
    assert len(os.listdir(store)) == 1


def test_large_archives_are_keyed_by_size_mtime_and_ends(tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "FULL_HASH_MAX", 10)
    monkeypatch.setattr(cache, "_EDGE", 4)
    blob = tmp_path / "big.tar"
    blob.write_bytes(b"0123456789abcdef")
    os.utime(blob, ns=(5, 5))
    key = cache.fingerprint(blob)
    blob.write_bytes(b"0123XXXXXXXXcdef")  # the middle is not read
    os.utime(blob, ns=(5, 5))
    assert cache.fingerprint(blob) == key
    blob.write_bytes(b"0123456789abcdeX")
    os.utime(blob, ns=(5, 5))
    assert cache.fingerprint(blob) != key
    blob.write_bytes(b"0123456789abcdef")
    os.utime(blob, ns=(6, 6))
    assert cache.fingerprint(blob) != key


@pytest.mark.parametrize("how", ["env", "argument"])
def test_caching_can_be_switched_off(class_folder, tmp_path, monkeypatch, how):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)  # a folder literally called "off" would appear here
    calls = []
    real = folders.decode_images
    monkeypatch.setattr(folders, "decode_images", lambda *a, **k: calls.append(1) or real(*a, **k))
    if how == "env":
        monkeypatch.setenv("QDISTILL_CACHE", "OFF")
    for _ in range(2):
        load_dataset("imagefolder", class_folder, None if how == "env" else "off")
    assert len(calls) == 2 and not (tmp_path / "home").exists() and not (tmp_path / "off").exists()
    assert cache.resolve_cache_dir("none") is None and cache.resolve_cache_dir(tmp_path) == tmp_path
    assert cache.resolve_cache_dir(False) is None  # YAML's reading of "cache_dir: off"


def test_default_cache_dir_is_under_home(tmp_path, monkeypatch):
    monkeypatch.delenv("QDISTILL_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache.default_cache_dir() == tmp_path / ".cache" / "qdistill"

import numpy as np
import pytest

from qdistill.data import channel_stats, decode, decode_images, load_dataset


def load(fmt, root, tmp_path, **kw):
    return load_dataset(fmt, root, cache_dir=tmp_path / "cache", **kw)


def test_train_test_class_folders(class_folder, tmp_path):
    data = load("imagefolder", class_folder, tmp_path)
    assert data.train.classes == ("cat", "dog") and data.num_classes == 2
    assert data.train.images.shape == (6, 8, 8, 3) and data.test.images.shape == (2, 8, 8, 3)
    np.testing.assert_array_equal(data.train.labels, [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(data.train.images[:, 0, 0, 0], [10, 11, 12, 100, 101, 102])
    np.testing.assert_array_equal(data.test.images[:, 3, 3, 2], [20, 110])
    assert data.augment == "crop_flip"
    assert (data.mean, data.std) == channel_stats(data.train.images)


def test_val_folder_is_the_test_split(class_folder, tmp_path):
    (class_folder / "test").rename(class_folder / "val")
    data = load("imagefolder", class_folder, tmp_path)
    np.testing.assert_array_equal(data.test.images[:, 0, 0, 0], [20, 110])


def test_bare_class_folders_have_no_test_split(class_folder, tmp_path):
    data = load("imagefolder", class_folder / "train", tmp_path)
    assert data.test is None and len(data.train) == 6 and data.train.classes == ("cat", "dog")


@pytest.mark.parametrize("archive", ["pets.tar.gz", "pets.tgz", "pets.tar"])
def test_archive_with_a_top_folder_matches_the_directory(class_folder, kit, tmp_path, archive):
    tar = kit.make_tar(class_folder, tmp_path / archive, arcname="wrapper")
    from_tar, from_dir = load("imagefolder", tar, tmp_path), load("imagefolder", class_folder, tmp_path)
    np.testing.assert_array_equal(from_tar.train.images, from_dir.train.images)
    np.testing.assert_array_equal(from_tar.test.labels, from_dir.test.labels)
    assert from_tar.train.classes == ("cat", "dog")


def test_tiny_imagenet_layout(kit, tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    for wnid, value in [("n02", 50), ("n01", 5)]:
        for i in range(2):
            kit.write_image(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", kit.solid(value + i, size=16))
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("ignored\n")
    kit.write_image(root / "val" / "images" / "val_0.JPEG", kit.solid(200, size=16))
    kit.write_image(root / "val" / "images" / "val_1.JPEG", kit.solid(30, size=16))
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn02\t0\t0\t9\t9\nval_1.JPEG\tn01\t1\t1\t5\t5\n")
    kit.write_image(root / "test" / "images" / "test_0.JPEG", kit.solid(0, size=16))  # unlabelled: skipped
    data = load("imagefolder", root, tmp_path)
    assert data.train.classes == ("n01", "n02") and len(data.train) == 4
    np.testing.assert_array_equal(data.test.labels, [0, 1])  # grouped by class: val_1 (n01), val_0 (n02)
    assert abs(int(data.test.images[0, 8, 8, 0]) - 30) <= 2  # JPEG: nearly exact for flat images


def test_mixed_sizes_are_resized_to_the_most_common(kit, tmp_path):
    root = tmp_path / "sizes"
    for i in range(3):
        kit.write_image(root / "a" / f"{i}.png", kit.solid(40, size=8))
    kit.write_image(root / "b" / "big.png", kit.solid(90, size=12))
    data = load("imagefolder", root, tmp_path)
    assert data.train.images.shape == (4, 8, 8, 3)
    assert np.all(data.train.images[3] == 90)


def test_grayscale_kept_unless_mixed_with_colour(kit, tmp_path):
    root = tmp_path / "gray"
    kit.write_image(root / "a" / "0.png", kit.solid(7, channels=1))
    kit.write_image(root / "b" / "0.png", kit.solid(9, channels=1))
    assert load("imagefolder", root, tmp_path).train.images.shape == (2, 8, 8, 1)
    kit.write_image(root / "b" / "1.png", kit.solid(9, channels=3))
    data = load("imagefolder", root, tmp_path)
    assert data.train.images.shape == (3, 8, 8, 3) and np.all(data.train.images[0] == 7)
    assert len(data.mean) == 3


def test_hidden_files_and_macos_junk_are_ignored(class_folder, tmp_path):
    (class_folder / "train" / "cat" / ".DS_Store").write_bytes(b"junk")
    (class_folder / "train" / "cat" / "._0000.png").write_bytes(b"junk")
    (class_folder / "__MACOSX" / "train").mkdir(parents=True)
    (class_folder / "__MACOSX" / "train" / "x.png").write_bytes(b"junk")
    (class_folder / "README.txt").write_text("not an image")
    assert len(load("imagefolder", class_folder, tmp_path).train) == 6


def test_unlabelled_folder_is_recursive(class_folder, kit, tmp_path):
    data = load("unlabelled", class_folder, tmp_path)
    assert data.train.labels is None and data.test is None and data.num_classes is None
    assert len(data.train) == 8 and data.train.image_shape == (8, 8, 3)
    tar = kit.make_tar(class_folder, tmp_path / "u.tar.gz")
    np.testing.assert_array_equal(load("unlabelled", tar, tmp_path).train.images, data.train.images)


@pytest.mark.parametrize("fmt", ["imagefolder", "unlabelled"])
def test_empty_folder_is_named(tmp_path, fmt):
    empty = tmp_path / "empty"
    (empty / "train" / "cat").mkdir(parents=True)
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match=f"no images found in {empty}"):
        load(fmt, empty, tmp_path)


def test_corrupt_image_is_named(class_folder, tmp_path):
    bad = class_folder / "train" / "dog" / "0001.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(ValueError, match=f"cannot decode image {bad}"):
        load("imagefolder", class_folder, tmp_path)


def test_corrupt_archive_is_named(tmp_path):
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00 not really gzip")
    with pytest.raises(ValueError, match=f"cannot read archive {bad}"):
        load("imagefolder", bad, tmp_path)


def test_loose_images_and_unknown_test_classes_are_refused(class_folder, kit, tmp_path):
    loose = tmp_path / "loose"
    kit.write_image(loose / "a.png", kit.solid(1))
    kit.write_image(loose / "cls" / "b.png", kit.solid(1))
    with pytest.raises(ValueError, match="outside class subfolders.*unlabelled"):
        load("imagefolder", loose, tmp_path)
    kit.write_image(class_folder / "test" / "cow" / "0.png", kit.solid(1))
    with pytest.raises(ValueError, match="classes missing from train: cow"):
        load("imagefolder", class_folder, tmp_path)


def test_parallel_decoding_matches_serial(kit, tmp_path, monkeypatch):
    blobs, names = [], []
    for i in range(12):
        path = kit.write_image(tmp_path / f"{i}.png", kit.solid(i * 20, channels=1 + 2 * (i % 2)))
        blobs.append(path.read_bytes())
        names.append(str(path))
    serial = decode_images(blobs, names, workers=1)
    monkeypatch.setattr(decode, "PARALLEL_MIN", 1)
    monkeypatch.setattr(decode, "_CHUNK", 5)
    np.testing.assert_array_equal(decode_images(blobs, names, workers=2), serial)
    assert serial.shape == (12, 8, 8, 3)

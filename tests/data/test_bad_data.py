"""Damaged archives and unusual pixel formats must fail loudly (or decode correctly), never train silently."""

import gzip
import io
import tarfile
import zipfile

import numpy as np
import pytest
from PIL import Image

from qdistill.data import decode, load_dataset
from qdistill.errors import DataError


def load(fmt, root, tmp_path):
    return load_dataset(fmt, root, cache_dir=tmp_path / "cache")


@pytest.fixture
def noisy_folder(tmp_path, kit):
    """``noisy/{train,test}/{a,b}``: 12 train and 4 test incompressible 16x16 images per class."""
    rng = np.random.default_rng(0)
    root = tmp_path / "noisy"
    for split, n in [("train", 12), ("test", 4)]:
        for cls in ("a", "b"):
            for i in range(n):
                kit.write_image(root / split / cls / f"{i:02d}.png", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    return root


def overwrite(path, offset, count=200):
    blob = bytearray(path.read_bytes())
    blob[offset : offset + count] = b"\xa5" * count
    path.write_bytes(bytes(blob))


def member_offset(tar_path, name_part):
    with tarfile.open(tar_path) as tar:
        return next(m.offset for m in tar.getmembers() if name_part in m.name)


@pytest.mark.parametrize("cache", ["on", "off"])  # the cache key reads every file first; without it, the reader does
def test_unreadable_file_in_a_folder_is_named(class_folder, tmp_path, cache):
    dangling = class_folder / "train" / "cat" / "gone.png"
    dangling.symlink_to(tmp_path / "deleted.png")
    with pytest.raises(DataError, match=f"cannot read {dangling}: No such file"):
        load_dataset("imagefolder", class_folder, cache_dir=tmp_path / "cache" if cache == "on" else "off")


def test_intact_archives_load(noisy_folder, kit, tmp_path):
    data = load("imagefolder", kit.make_tar(noisy_folder, tmp_path / "ok.tar.gz"), tmp_path)
    assert (len(data.train), len(data.test), data.train.classes) == (24, 8, ("a", "b"))


def test_tar_gz_damaged_mid_stream_is_refused(noisy_folder, kit, tmp_path):
    archive = kit.make_tar(noisy_folder, tmp_path / "noisy.tar.gz")
    overwrite(archive, archive.stat().st_size // 2)
    with pytest.raises(DataError, match=f"cannot read archive {archive}"):
        load("imagefolder", archive, tmp_path)


def test_tar_gz_with_a_damaged_header_is_refused(noisy_folder, kit, tmp_path):
    # the case: tarfile stopped at the bad header, train/ vanished, test/ became one class "test"
    plain = kit.make_tar(noisy_folder, tmp_path / "noisy.tar")
    tar_bytes, header = plain.read_bytes(), member_offset(plain, "train/a/00.png")
    blob = gzip.compress(tar_bytes, compresslevel=0)  # stored blocks: tar bytes appear verbatim
    archive = tmp_path / "noisy.tar.gz"
    archive.write_bytes(blob)
    overwrite(archive, blob.index(tar_bytes[header : header + 512], header))  # pax blocks repeat: search from there
    with pytest.raises(DataError, match=f"cannot read archive {archive}: unreadable tar header after 8 files"):
        load("imagefolder", archive, tmp_path)


def test_plain_tar_with_a_damaged_header_is_refused(noisy_folder, kit, tmp_path):
    # tarfile stops at the bad header and would hand back only the members before it
    archive = kit.make_tar(noisy_folder, tmp_path / "noisy.tar")
    overwrite(archive, member_offset(archive, "train/a/00.png"))
    with pytest.raises(DataError, match=f"cannot read archive {archive}: unreadable tar header after \\d+ files"):
        load("unlabelled", archive, tmp_path)


def test_truncated_archives_are_refused(noisy_folder, kit, tmp_path):
    gz = kit.make_tar(noisy_folder, tmp_path / "noisy.tgz")
    gz.write_bytes(gz.read_bytes()[:-100])
    with pytest.raises(DataError, match=f"cannot read archive {gz}"):
        load("imagefolder", gz, tmp_path)
    plain = kit.make_tar(noisy_folder, tmp_path / "noisy.tar")
    cut = member_offset(plain, "train/b/11.png")  # ends cleanly at a member boundary
    plain.write_bytes(plain.read_bytes()[:cut])
    with pytest.raises(DataError, match="without an end-of-archive marker"):
        load("imagefolder", plain, tmp_path)


@pytest.mark.parametrize("suffix, mode", [("tar.bz2", "w:bz2"), ("tar.xz", "w:xz")])
def test_bz2_and_xz_archives_load_and_truncation_is_refused(noisy_folder, tmp_path, suffix, mode):
    archive = tmp_path / f"noisy.{suffix}"
    with tarfile.open(archive, mode) as tar:
        tar.add(noisy_folder, arcname="noisy")
    assert len(load("imagefolder", archive, tmp_path).train) == 24
    archive.write_bytes(archive.read_bytes()[:-64])
    with pytest.raises(DataError, match=f"cannot read archive {archive}"):
        load("imagefolder", archive, tmp_path)


def test_zip_archive_loads_like_the_folder(noisy_folder, tmp_path):
    archive = tmp_path / "noisy.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(noisy_folder.rglob("*.png")):
            zf.write(path, "wrapper/" + path.relative_to(noisy_folder).as_posix())
    from_zip, from_dir = load("imagefolder", archive, tmp_path), load("imagefolder", noisy_folder, tmp_path)
    np.testing.assert_array_equal(from_zip.train.images, from_dir.train.images)
    np.testing.assert_array_equal(from_zip.test.labels, from_dir.test.labels)


def test_damaged_zip_member_is_refused(noisy_folder, tmp_path):
    archive = tmp_path / "noisy.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
        for path in sorted(noisy_folder.rglob("*.png")):
            zf.write(path, path.relative_to(noisy_folder).as_posix())
    overwrite(archive, archive.stat().st_size // 3)  # inside a stored member's bytes: its CRC fails
    with pytest.raises(DataError, match=f"cannot read archive {archive}"):
        load("imagefolder", archive, tmp_path)


# values v -> round(v / 257), worked by hand: 128/257 = 0.498, 129/257 = 0.502, 32768/257 = 127.50,
# 1000/257 = 3.89, 60000/257 = 233.46
SIXTEEN_BIT = np.array([[0, 128, 129, 257], [32768, 65535, 1000, 60000]], dtype=np.uint16)
EIGHT_BIT = np.array([[0, 0, 1, 1], [128, 255, 4, 233]], dtype=np.uint8)


def encode(array, fmt, mode=None):
    buffer = io.BytesIO()
    image = Image.fromarray(array) if mode is None else Image.fromarray(array, mode)
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_16_bit_grayscale_png_is_scaled_not_clipped():
    blob = encode(SIXTEEN_BIT, "PNG")
    assert Image.open(io.BytesIO(blob)).mode == "I;16"
    np.testing.assert_array_equal(decode.decode_image(blob, "x.png"), EIGHT_BIT)


def test_16_bit_pgm_decodes_through_mode_i():
    blob = b"P5\n4 2\n65535\n" + SIXTEEN_BIT.astype(">u2").tobytes()
    assert Image.open(io.BytesIO(blob)).mode == "I"
    np.testing.assert_array_equal(decode.decode_image(blob, "x.pgm"), EIGHT_BIT)


def test_16_bit_images_in_an_image_folder(kit, tmp_path):
    root = tmp_path / "wide"
    for cls in ("a", "b"):
        root.joinpath(cls).mkdir(parents=True)
        Image.fromarray(SIXTEEN_BIT).save(root / cls / "0.png")
    data = load("imagefolder", root, tmp_path)
    np.testing.assert_array_equal(data.train.images[1, ..., 0], EIGHT_BIT)


def test_float_and_out_of_range_integer_images_are_refused():
    with pytest.raises(DataError, match="f.tif: floating-point pixels"):
        decode.decode_image(encode(np.full((2, 2), 0.5, np.float32), "TIFF"), "f.tif")
    with pytest.raises(DataError, match=r"i.tif: integer pixels 0..70000 do not fit 16 bits"):
        decode.decode_image(encode(np.array([[0, 70000]], np.int32), "TIFF"), "i.tif")

"""Tiny synthetic datasets written to tmp_path for the qdistill.data tests."""

from __future__ import annotations

import gzip
import pickle
import tarfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image


def solid(value: int, size: int = 8, channels: int = 3) -> np.ndarray:
    """A uniform image whose pixel value identifies it exactly (PNG is lossless)."""
    shape = (size, size, channels) if channels > 1 else (size, size)
    return np.full(shape, value, dtype=np.uint8)


def write_image(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def make_tar(src: Path, archive: Path, arcname: str | None = None) -> Path:
    with tarfile.open(archive, "w:gz" if archive.name.endswith(("gz", "tgz")) else "w") as tar:
        tar.add(src, arcname=arcname or src.name)
    return archive


@pytest.fixture
def class_folder(tmp_path: Path) -> Path:
    """``root/{train,test}/{cat,dog}``: train cat 10,11,12; dog 100,101,102; test cat 20; dog 110."""
    root = tmp_path / "pets"
    for split, cls, values in [
        ("train", "dog", [100, 101, 102]),
        ("train", "cat", [10, 11, 12]),
        ("test", "cat", [20]),
        ("test", "dog", [110]),
    ]:
        for i, v in enumerate(values):
            write_image(root / split / cls / f"{i:04d}.png", solid(v))
    return root


def write_idx(path: Path, array: np.ndarray, magic: int | None = None) -> Path:
    """Writes an unsigned-byte IDX file, gzipped when `path` ends with ``.gz``."""
    magic = 0x0800 + array.ndim if magic is None else magic
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    blob = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(blob) if path.suffix == ".gz" else blob)
    return path


@pytest.fixture
def idx_folder(tmp_path: Path):
    """A factory for a tiny MNIST-style folder: 6 train and 4 test 4x5 images."""

    def make(gz: bool = False, test: bool = True) -> Path:
        root = tmp_path / f"idx-{'gz' if gz else 'raw'}-{'with' if test else 'no'}-test"
        ext = ".gz" if gz else ""
        rng = np.random.default_rng(0)
        splits = [("train", 6)] + ([("t10k", 4)] if test else [])
        for split, n in splits:
            write_idx(root / f"{split}-images-idx3-ubyte{ext}", rng.integers(0, 256, (n, 4, 5)))
            write_idx(root / f"{split}-labels-idx1-ubyte{ext}", np.arange(n) % 3)
        return root

    return make


def _cifar_pickle(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def cifar_data(n: int, offset: int) -> np.ndarray:
    """``[n, 3072]`` rows whose R, G, B planes hold offset + 3*i + {0, 1, 2}."""
    planes = offset + 3 * np.arange(n)[:, None] + np.arange(3)[None, :]
    return np.repeat(planes, 1024, axis=1).astype(np.uint8)


@pytest.fixture
def cifar10_folder(tmp_path: Path) -> Path:
    """``tmp/cifar-10-batches-py`` with five 2-image batches, a 3-image test batch and meta."""
    root = tmp_path / "cifar-10-batches-py"
    for b in range(1, 6):
        _cifar_pickle(root / f"data_batch_{b}", {b"data": cifar_data(2, 6 * b), b"labels": [b % 10, (b + 1) % 10]})
    _cifar_pickle(root / "test_batch", {b"data": cifar_data(3, 100), b"labels": [0, 1, 9]})
    names = [n.encode() for n in "airplane automobile bird cat deer dog frog horse ship truck".split()]
    _cifar_pickle(root / "batches.meta", {b"label_names": names, b"num_cases_per_batch": 2})
    return root


@pytest.fixture
def cifar100_folder(tmp_path: Path) -> Path:
    root = tmp_path / "cifar-100-python"
    _cifar_pickle(root / "train", {b"data": cifar_data(4, 0), b"fine_labels": [0, 99, 5, 5], b"coarse_labels": [0] * 4})
    _cifar_pickle(root / "test", {b"data": cifar_data(2, 50), b"fine_labels": [1, 2], b"coarse_labels": [0] * 2})
    _cifar_pickle(root / "meta", {b"fine_label_names": [f"c{i}".encode() for i in range(100)]})
    return root


@pytest.fixture
def kit() -> SimpleNamespace:
    """The helpers above, as a fixture so tests need no import of this conftest."""
    return SimpleNamespace(
        solid=solid, write_image=write_image, make_tar=make_tar, write_idx=write_idx, cifar_data=cifar_data
    )

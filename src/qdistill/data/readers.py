"""Readers for fixed-layout datasets: the bundled digits, CIFAR pickles and MNIST-style IDX files."""

from __future__ import annotations

import gzip
import io
import pickle
import posixpath
import zlib
from importlib import resources

import numpy as np

from ..errors import DataError, MissingFileError
from .imageset import ImageSet, split_holdout
from .sources import Source

__all__ = [
    "CIFAR10_LAYOUT",
    "CIFAR100_LAYOUT",
    "IDX_LAYOUT",
    "load_cifar10",
    "load_cifar100",
    "load_digits",
    "load_idx",
    "parse_idx",
]

CIFAR10_LAYOUT = "the CIFAR-10 python version: data_batch_1..5, test_batch, batches.meta (or its .tar.gz)"
CIFAR100_LAYOUT = "the CIFAR-100 python version: train, test, meta (or its .tar.gz)"
IDX_LAYOUT = "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (.gz ok)"
DIGITS_FILE = "digits.npz"
DIGITS_TEST_FRACTION = 0.2
DIGITS_SEED = 0


def load_digits(source: Source | None = None) -> tuple[ImageSet, ImageSet]:
    """The bundled 8x8 digits (values 0..16 scaled to 0..255), split 80/20 stratified.

    The 1,797 images are the UCI "Optical Recognition of Handwritten Digits" test set (CC BY 4.0),
    the copy scikit-learn ships, in the same order; see ``data/README.md``.
    """
    with resources.files(__package__).joinpath(DIGITS_FILE).open("rb") as f, np.load(f) as npz:
        raw, labels = npz["images"], npz["labels"]
    images = np.round(raw * (255.0 / 16.0)).astype(np.uint8)[..., None]
    full = ImageSet(images, labels.astype(np.int64), tuple(str(d) for d in range(10)))
    return split_holdout(full, DIGITS_TEST_FRACTION, seed=DIGITS_SEED)


# --- CIFAR ---------------------------------------------------------------------------------


class _CifarUnpickler(pickle.Unpickler):
    """Refuses every global except those numpy needs to rebuild arrays: loading stays data-only."""

    _ALLOWED = {
        (module, name)
        for module in ("numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric", "numpy._core.numeric")
        for name in ("_reconstruct", "scalar", "_frombuffer")
    } | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(module, name)


def _unpickle(source: Source, rel: str) -> dict[str, object]:
    try:
        obj = _CifarUnpickler(io.BytesIO(source.read(rel)), encoding="bytes").load()
    except Exception as err:  # noqa: BLE001 - pickle raises many types on bad input
        raise DataError(f"cannot read CIFAR batch {source.display(rel)}: {err}") from None
    if not isinstance(obj, dict):
        raise DataError(f"{source.display(rel)} is not a CIFAR batch (got {type(obj).__name__})")
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def _cifar_batch(source: Source, rel: str, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(source, rel)
    if "data" not in batch or label_key not in batch:
        raise DataError(f"{source.display(rel)} lacks 'data' or '{label_key}'; keys: {sorted(batch)}")
    data = np.asarray(batch["data"], dtype=np.uint8)
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise DataError(
            f"{source.display(rel)}: expected data [N, 3072] and N labels, got {data.shape}, {labels.shape}"
        )
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels


def _find_dir(source: Source, required: tuple[str, ...], layout: str) -> str:
    """The folder (``""`` or ``"a/b/"``) holding all `required` files."""
    folders = {posixpath.dirname(f) for f in source.files if posixpath.basename(f) == required[0]}
    for folder in sorted(folders, key=len):
        prefix = folder + "/" if folder else ""
        if all(prefix + name in source.files for name in required):
            return prefix
    raise MissingFileError(f"no {', '.join(required)} found in {source.display()}; expected {layout}")


def _cifar(
    source: Source,
    files: tuple[tuple[str, ...], str, str],
    keys: tuple[str, str],
    num_classes: int,
    layout: str,
) -> tuple[ImageSet, ImageSet]:
    """Reads CIFAR pickles: `files` = (train batches, test batch, meta), `keys` = (class names, labels).

    Refuses a meta file or labels that do not give exactly `num_classes` classes; without a meta
    file the classes are named ``"0"``, ``"1"``, ...
    """
    train_files, test_file, meta = files
    names_key, label_key = keys
    prefix = _find_dir(source, (*train_files, test_file), layout)
    parts = [_cifar_batch(source, prefix + f, label_key) for f in (*train_files, test_file)]
    classes = tuple(str(i) for i in range(num_classes))
    if prefix + meta in source.files:
        names = _unpickle(source, prefix + meta).get(names_key)
        if names is not None:
            classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    if len(classes) != num_classes:
        raise DataError(f"{source.display(prefix + meta)} names {len(classes)} classes; expected {num_classes}")
    for f, (_, labels) in zip((*train_files, test_file), parts, strict=True):
        if len(labels) and not 0 <= labels.min() <= labels.max() < num_classes:
            raise DataError(
                f"{source.display(prefix + f)} has labels {labels.min()}..{labels.max()}; expected 0..{num_classes - 1}"
            )
    train = ImageSet(np.concatenate([p[0] for p in parts[:-1]]), np.concatenate([p[1] for p in parts[:-1]]), classes)
    return train, ImageSet(*parts[-1], classes)


def load_cifar10(source: Source) -> tuple[ImageSet, ImageSet]:
    """CIFAR-10 from the official python pickles (the folder, a parent of it, or the archive)."""
    batches = tuple(f"data_batch_{i}" for i in range(1, 6))
    return _cifar(source, (batches, "test_batch", "batches.meta"), ("label_names", "labels"), 10, CIFAR10_LAYOUT)


def load_cifar100(source: Source) -> tuple[ImageSet, ImageSet]:
    """CIFAR-100 (fine labels) from the official python pickles."""
    files = (("train",), "test", "meta")
    return _cifar(source, files, ("fine_label_names", "fine_labels"), 100, CIFAR100_LAYOUT)


# --- IDX (MNIST, Fashion-MNIST) ----------------------------------------------------------


def parse_idx(blob: bytes, name: str, ndim: int) -> np.ndarray:
    """Parses an unsigned-byte IDX file (optionally gzipped) with `ndim` dimensions.

    Raises:
        DataError: naming `name` on a bad gzip stream, magic number or size.
    """
    if blob[:2] == b"\x1f\x8b":
        try:
            blob = gzip.decompress(blob)
        except (OSError, EOFError, zlib.error) as err:
            raise DataError(f"{name}: corrupt gzip data: {err}") from None
    expected_magic = 0x0800 + ndim
    magic = int.from_bytes(blob[:4], "big") if len(blob) >= 4 else -1
    if magic != expected_magic:
        raise DataError(
            f"{name}: bad IDX magic number 0x{max(magic, 0):08X}; expected 0x{expected_magic:08X} "
            f"(unsigned bytes, {ndim} dimension{'s' if ndim > 1 else ''})"
        )
    header = 4 + 4 * ndim
    if len(blob) < header:
        raise DataError(f"{name}: truncated IDX header ({len(blob)} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(blob, dtype=">u4", count=ndim, offset=4))
    if len(blob) != header + int(np.prod(dims)):
        raise DataError(f"{name}: {len(blob) - header} data bytes do not match the header's shape {dims}")
    return np.frombuffer(blob, dtype=np.uint8, offset=header).reshape(dims).copy()


def _find_idx(source: Source, stem: str) -> str | None:
    dotted = stem.replace("-idx", ".idx")
    wanted = [stem, dotted, stem + ".gz", dotted + ".gz"]  # uncompressed first: faster
    by_name = {}
    for f in source.files:
        by_name.setdefault(posixpath.basename(f), f)
    return next((by_name[w] for w in wanted if w in by_name), None)


def _idx_split(source: Source, split: str) -> ImageSet | None:
    images_rel = _find_idx(source, f"{split}-images-idx3-ubyte")
    labels_rel = _find_idx(source, f"{split}-labels-idx1-ubyte")
    if images_rel is None and labels_rel is None:
        return None
    if images_rel is None or labels_rel is None:
        missing = f"{split}-{'images-idx3' if images_rel is None else 'labels-idx1'}-ubyte"
        raise MissingFileError(f"{missing}[.gz] is missing from {source.display()}; expected {IDX_LAYOUT}")
    images = parse_idx(source.read(images_rel), source.display(images_rel), 3)
    labels = parse_idx(source.read(labels_rel), source.display(labels_rel), 1)
    if len(labels) != len(images):
        raise DataError(f"{source.display(labels_rel)} has {len(labels)} labels for {len(images)} images")
    return ImageSet(images[..., None], labels.astype(np.int64))


def load_idx(source: Source) -> tuple[ImageSet, ImageSet | None]:
    """MNIST-style IDX files; the ``t10k`` test pair is optional."""
    train = _idx_split(source, "train")
    if train is None:
        raise MissingFileError(f"no train-images-idx3-ubyte[.gz] in {source.display()}; expected {IDX_LAYOUT}")
    return train, _idx_split(source, "t10k")

"""The dataset-format registry and `load_dataset`, the one entry point for loading data."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, MissingFileError
from ..registry import Registry
from . import folders, readers
from .cache import cache_file, read_cache, resolve_cache_dir, write_cache
from .imageset import AUGMENTS, DataSplits, ImageSet, channel_stats
from .sources import Source, open_source

__all__ = ["DATASET_FORMATS", "DatasetFormat", "list_formats", "load_dataset"]

log = logging.getLogger(__name__)

Loader = Callable[[Source | None], tuple[ImageSet, ImageSet | None]]
Stats = tuple[float, ...]


@dataclass(frozen=True)
class DatasetFormat:
    """How to read one on-disk format.

    Add a format with ``DATASET_FORMATS.register("name")(DatasetFormat(load, layout, augment))``.

    Attributes:
        load: reads ``(train, test)`` from a `Source` (None for formats without a path).
        layout: the expected layout, quoted in error messages.
        augment: the default augmentation, one of `AUGMENTS`.
        needs_root: whether the format reads from a path.
        cache: whether decoded arrays are cached as ``.npz`` (worth it for encoded images).
        mean: conventional per-channel mean; None computes it from the train images.
        std: conventional per-channel std; None computes it from the train images.
    """

    load: Loader
    layout: str
    augment: str
    needs_root: bool = True
    cache: bool = False
    mean: Stats | None = None
    std: Stats | None = None

    def __post_init__(self) -> None:
        if self.augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {AUGMENTS}, got {self.augment!r}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std, or neither (to compute them from the data)")


DATASET_FORMATS: Registry[DatasetFormat] = Registry("dataset format")
DATASET_FORMATS.register("digits")(
    DatasetFormat(readers.load_digits, "the bundled 8x8 digits (no path)", "none", needs_root=False)
)
DATASET_FORMATS.register("cifar10")(
    DatasetFormat(
        readers.load_cifar10,
        readers.CIFAR10_LAYOUT,
        "crop_flip",
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
    )
)
DATASET_FORMATS.register("cifar100")(
    DatasetFormat(
        readers.load_cifar100,
        readers.CIFAR100_LAYOUT,
        "crop_flip",
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
    )
)
DATASET_FORMATS.register("idx")(DatasetFormat(readers.load_idx, readers.IDX_LAYOUT, "crop"))
DATASET_FORMATS.register("imagefolder")(
    DatasetFormat(folders.load_imagefolder, folders.IMAGEFOLDER_LAYOUT, "crop_flip", cache=True)
)
DATASET_FORMATS.register("unlabelled")(
    DatasetFormat(folders.load_unlabelled, folders.UNLABELLED_LAYOUT, "crop_flip", cache=True)
)


def list_formats() -> list[str]:
    """Names accepted as `load_dataset`'s `source`."""
    return DATASET_FORMATS.names()


def _pack(train: ImageSet, test: ImageSet | None, mean: Sequence[float], std: Sequence[float]) -> dict[str, np.ndarray]:
    arrays = {"train_images": train.images, "mean": np.asarray(mean), "std": np.asarray(std)}
    if train.labels is not None:
        arrays["train_labels"] = train.labels
    if test is not None:
        arrays["test_images"] = test.images
        if test.labels is not None:
            arrays["test_labels"] = test.labels
    if train.classes is not None:
        arrays["classes"] = np.asarray(train.classes, dtype=str)
    return arrays


def _unpack(arrays: dict[str, np.ndarray]) -> tuple[ImageSet, ImageSet | None, Stats, Stats]:
    classes = tuple(arrays["classes"].tolist()) if "classes" in arrays else None
    train = ImageSet(arrays["train_images"], arrays.get("train_labels"), classes)
    test = ImageSet(arrays["test_images"], arrays.get("test_labels"), classes) if "test_images" in arrays else None
    return train, test, tuple(arrays["mean"].tolist()), tuple(arrays["std"].tolist())


def _read(
    name: str, fmt: DatasetFormat, root: Path | None, cache_dir: str | Path | bool | None
) -> tuple[ImageSet, ImageSet | None, Stats, Stats]:
    """``(train, test, mean, std)`` from the cache when fresh, else decoded (and cached)."""
    if root is None:
        train, test = fmt.load(None)
        return (train, test, *channel_stats(train.images))
    folder = resolve_cache_dir(cache_dir) if fmt.cache else None
    file = cache_file(folder, name, root) if folder is not None else None
    cached = read_cache(file) if file is not None else None
    if cached is not None:
        try:
            log.debug("loaded %s from cache %s", root, file)
            return _unpack(cached)
        except (KeyError, TypeError, ValueError) as err:
            log.warning("ignoring malformed dataset cache %s: %s", file, err)
    start = time.perf_counter()
    train, test = fmt.load(open_source(root))
    mean, std = (fmt.mean, fmt.std) if fmt.mean is not None and fmt.std is not None else channel_stats(train.images)
    log.info("decoded %d images from %s in %.1f s", len(train) + len(test or ()), root, time.perf_counter() - start)
    if file is not None:
        write_cache(file, _pack(train, test, mean, std))
    return train, test, mean, std


def load_dataset(
    source: str,
    root: str | Path | None = None,
    cache_dir: str | Path | bool | None = None,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> DataSplits:
    """Loads a dataset into memory.

    Args:
        source: the format, one of `list_formats()`: ``digits``, ``cifar10``, ``cifar100``,
            ``idx``, ``imagefolder`` or ``unlabelled``.
        root: the directory, or a ``.tar``/``.tar.gz``/``.tgz`` archive of it (not for ``digits``).
        cache_dir: where decoded image folders are cached; default env ``QDISTILL_CACHE``
            or ``~/.cache/qdistill``; ``"off"`` or False (here, or ``off`` in the env) decodes every time.
        mean: per-channel mean on the [0, 1] scale, overriding the format's or the data's.
        std: per-channel std on the [0, 1] scale, overriding the format's or the data's.

    Raises:
        MissingFileError: `root` (or a file the layout needs) does not exist.
        ConfigError: unknown format, or a root given where none is read (or missing where one is).
        DataError: no images, an unreadable file or archive, or a layout or class list that is
            not what the format promises (named in the message).
    """
    if source not in DATASET_FORMATS:
        raise ConfigError(f"unknown dataset format {source!r}; choose one of: {', '.join(list_formats())}")
    fmt = DATASET_FORMATS.get(source)
    path = None
    if fmt.needs_root:
        if root is None:
            raise ConfigError(f"format {source!r} reads from a path: pass root=<{fmt.layout}>")
        path = Path(root).expanduser()
        if not path.exists():
            raise MissingFileError(f"{source}: {path} does not exist; expected {fmt.layout}")
    elif root is not None:
        raise ConfigError(f"format {source!r} takes no root (got {root!r})")
    train, test, data_mean, data_std = _read(source, fmt, path, cache_dir)
    classes = train.classes
    if classes is not None:
        num_classes: int | None = len(classes)
    elif train.labels is not None:
        num_classes = int(max(s.labels.max() for s in (train, test) if s is not None and s.labels is not None)) + 1
    else:
        num_classes = None
    return DataSplits(
        train,
        test,
        num_classes,
        tuple(mean) if mean is not None else data_mean,
        tuple(std) if std is not None else data_std,
        fmt.augment,
    )

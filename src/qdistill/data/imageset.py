"""In-memory image sets, dataset splits and a stratified hold-out split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError, DataError

__all__ = ["AUGMENTS", "DataSplits", "ImageSet", "channel_stats", "split_holdout"]

AUGMENTS = ("none", "crop", "crop_flip")
_STATS_CHUNK = 1 << 20


@dataclass(frozen=True, eq=False, repr=False)
class ImageSet:
    """Decoded images, held once in memory as ``uint8 [N, H, W, C]``.

    A 3-D ``[N, H, W]`` array is accepted and gets a channel axis; integer labels are
    stored as ``int64``.

    Attributes:
        images: ``uint8 [N, H, W, C]`` pixels.
        labels: ``int64 [N]`` class indices, or None for unlabelled data.
        classes: class names indexed by label, when known.
    """

    images: np.ndarray
    labels: np.ndarray | None
    classes: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        images = self.images
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
            raise TypeError(f"ImageSet.images must be a uint8 numpy array, got {_describe(images)}")
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim != 4:
            raise DataError(f"ImageSet.images must have shape [N, H, W, C], got {images.shape}")
        object.__setattr__(self, "images", images)
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        if self.labels is None:
            return
        labels = self.labels
        if not isinstance(labels, np.ndarray) or labels.dtype.kind not in "iu":
            raise TypeError(f"ImageSet.labels must be an integer numpy array or None, got {_describe(labels)}")
        if labels.shape != (len(images),):
            raise DataError(f"ImageSet.labels must have shape ({len(images)},), got {labels.shape}")
        labels = labels.astype(np.int64, copy=False)
        if len(labels) and labels.min() < 0:
            raise DataError("ImageSet.labels must be non-negative")
        if self.classes is not None and len(labels) and labels.max() >= len(self.classes):
            raise DataError(f"label {labels.max()} is out of range for {len(self.classes)} classes")
        object.__setattr__(self, "labels", labels)

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        n, h, w, c = self.images.shape
        labels = "none" if self.labels is None else "int64"
        classes = "?" if self.classes is None else len(self.classes)
        return f"ImageSet(n={n}, size={h}x{w}x{c}, labels={labels}, classes={classes})"

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of every image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, index: np.ndarray) -> ImageSet:
        """Copies the samples selected by an integer index array or a boolean mask."""
        index = np.asarray(index)
        labels = None if self.labels is None else self.labels[index]
        return ImageSet(self.images[index], labels, self.classes)

    def without_labels(self) -> ImageSet:
        """The same images (shared, not copied) with ``labels=None``."""
        return ImageSet(self.images, None, self.classes)


@dataclass(frozen=True, eq=False)
class DataSplits:
    """A dataset as loaded by `load_dataset`.

    Attributes:
        train: training images.
        test: test images, or None when the source has no test split.
        num_classes: number of classes, or None for unlabelled data.
        mean: per-channel mean of the pixels on the ``[0, 1]`` scale.
        std: per-channel standard deviation on the ``[0, 1]`` scale.
        augment: default augmentation for this dataset (one of `AUGMENTS`).
    """

    train: ImageSet
    test: ImageSet | None
    num_classes: int | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str

    def __post_init__(self) -> None:
        channels = self.train.images.shape[-1]
        if self.test is not None and self.test.image_shape != self.train.image_shape:
            raise DataError(f"test images {self.test.image_shape} differ from train images {self.train.image_shape}")
        for name in ("mean", "std"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != channels:
                raise ConfigError(f"{name} needs one value per channel ({channels}), got {value}")
            object.__setattr__(self, name, value)
        if min(self.std) <= 0:
            raise ConfigError(f"std must be positive, got {self.std}")
        if self.augment not in AUGMENTS:
            raise ConfigError(f"augment must be one of {AUGMENTS}, got {self.augment!r}")


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of ``uint8 [N, H, W, C]`` images on the [0, 1] scale.

    Exact: it counts the 256 pixel values of each channel instead of summing floats.
    A constant channel gets std 1.0 so that normalising by it stays finite.
    """
    if images.size == 0:
        raise DataError("cannot compute statistics of an empty image set")
    flat = images.reshape(-1, images.shape[-1])
    values = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for c in range(flat.shape[1]):
        counts = np.zeros(256, dtype=np.float64)
        for start in range(0, len(flat), _STATS_CHUNK):  # chunked: bincount copies to intp
            counts += np.bincount(flat[start : start + _STATS_CHUNK, c], minlength=256)
        total = counts.sum()
        mean = float(counts @ values / total)
        var = float(counts @ (values - mean) ** 2 / total)
        means.append(mean)
        stds.append(var**0.5 if var > 0 else 1.0)
    return tuple(means), tuple(stds)


def split_holdout(data: ImageSet, fraction: float, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """Splits off a deterministic hold-out set, stratified by label when labels exist.

    The hold-out gets ``round(fraction * len(data))`` samples; with labels, each class
    contributes its share rounded down or up (largest remainder), so class proportions
    match to within one sample. Both parts keep the original sample order.

    Args:
        data: the set to split.
        fraction: share of samples to hold out, strictly between 0 and 1.
        seed: seed of the split; the same seed always gives the same split.

    Returns:
        ``(rest, holdout)``, disjoint and together covering `data`.
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"fraction must be strictly between 0 and 1, got {fraction}")
    n = len(data)
    n_hold = round(fraction * n)
    if n_hold < 1 or n_hold >= n:
        raise DataError(f"fraction {fraction} of {n} samples leaves one side empty")
    rng = np.random.default_rng(seed)
    if data.labels is None:
        hold = rng.permutation(n)[:n_hold]
    else:
        groups = [np.flatnonzero(data.labels == k) for k in np.unique(data.labels)]
        quotas = _largest_remainder([fraction * len(g) for g in groups], n_hold)
        hold = np.concatenate([rng.permutation(g)[:q] for g, q in zip(groups, quotas, strict=True)])
    mask = np.zeros(n, dtype=bool)
    mask[hold] = True
    return data.subset(~mask), data.subset(mask)


def _largest_remainder(shares: list[float], total: int) -> list[int]:
    """Rounds `shares` to integers summing to `total`, giving leftovers to the largest remainders."""
    floors = [int(np.floor(s)) for s in shares]
    order = sorted(range(len(shares)), key=lambda i: (floors[i] - shares[i], i))
    for i in order[: total - sum(floors)]:
        floors[i] += 1
    return floors


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"ndarray of {value.dtype}"
    return type(value).__name__

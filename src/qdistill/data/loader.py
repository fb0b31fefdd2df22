"""`BatchLoader`: deterministic, batch-wise augmented mini-batches straight from uint8 arrays.

`EpochLoader` holds the part every loader shares: an order fixed by ``(seed, epoch)``, resumable mid-epoch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from .imageset import AUGMENTS, ImageSet

__all__ = ["BatchLoader", "EpochLoader", "default_pad"]

Batch = torch.Tensor | tuple[torch.Tensor, torch.Tensor]
Index = slice | torch.Tensor


def default_pad(height: int, width: int) -> int:
    """Crop padding by image size: 4 from 32 px (CIFAR), 2 from 16 px (MNIST), else 1 (8x8 digits)."""
    side = min(height, width)
    return 4 if side >= 32 else 2 if side >= 16 else 1


def _generator(*key: int) -> torch.Generator:
    """A fresh generator seeded from a key such as ``(seed, epoch)`` alone."""
    state = np.random.SeedSequence(list(key)).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


class EpochLoader:
    """Mini-batches over `num_samples` items in an order that depends only on ``(seed, epoch)``.

    Each pass uses the current `epoch` and then advances it by one; `set_epoch` pins the next
    pass (and may start it mid-way). Subclasses build one batch from the indices `_batch` gets:
    a slice in storage order, or an index tensor when shuffling.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        shuffle: bool,
        drop_last: bool,
        seed: int,
        num_shards: int = 1,
        shard: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if seed < 0:
            raise ConfigError(f"seed must be >= 0, got {seed}")
        if not 0 <= shard < num_shards:
            raise ConfigError(f"shard must be in [0, num_shards={num_shards}), got {shard}")
        if batch_size % num_shards:
            raise ConfigError(f"the batch size {batch_size} does not split evenly over {num_shards} processes")
        if num_shards > 1 and not drop_last and num_samples % batch_size:
            raise ConfigError(
                f"{num_samples} samples leave a short last batch that {num_shards} processes cannot "
                "share evenly: use drop_last=True or a batch size that divides the data"
            )
        self.num_shards, self.shard = num_shards, shard
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.epoch = 0
        self._start_batch = 0
        self._num_samples = num_samples

    def __len__(self) -> int:
        if self.drop_last:
            return self._num_samples // self.batch_size
        return math.ceil(self._num_samples / self.batch_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Makes the next pass epoch `epoch`, starting at batch `start_batch` (to resume mid-epoch)."""
        if epoch < 0 or not 0 <= start_batch <= len(self):
            raise ValueError(f"need epoch >= 0 and 0 <= start_batch <= {len(self)}, got {epoch}, {start_batch}")
        self.epoch = epoch
        self._start_batch = start_batch

    def __iter__(self) -> Iterator:
        epoch, start = self.epoch, self._start_batch
        self.epoch, self._start_batch = epoch + 1, 0
        order = torch.randperm(self._num_samples, generator=_generator(self.seed, epoch)) if self.shuffle else None
        return self._batches(epoch, start, order)

    def _batches(self, epoch: int, start: int, order: torch.Tensor | None) -> Iterator:
        for b in range(start, len(self)):
            lo, hi = b * self.batch_size, min((b + 1) * self.batch_size, self._num_samples)
            yield self._batch(slice(lo, hi) if order is None else order[lo:hi], epoch, b)

    def _rows(self, n: int) -> slice:
        """This shard's contiguous rows of a global batch of ``n`` (all of them without sharding)."""
        per = n // self.num_shards
        return slice(self.shard * per, (self.shard + 1) * per)

    def _batch(self, index: Index, epoch: int, batch: int) -> object:
        """Build global batch ``batch`` from ``index`` (all of its rows); yield only `_rows` of it."""
        raise NotImplementedError


def take(tensor: torch.Tensor, index: Index) -> torch.Tensor:
    """Rows of `tensor` at a slice (a view) or an index tensor (a copy)."""
    return tensor[index] if isinstance(index, slice) else tensor.index_select(0, index)


class BatchLoader(EpochLoader):
    """Iterates over an `ImageSet` in normalised float32 NCHW batches.

    Augmentation runs on the whole batch with tensor ops: zero padding by `pad`, a random
    crop back to the original size, and for ``"crop_flip"`` a horizontal flip with p=0.5.
    Padding is applied to the raw pixels, so padded borders are black before normalising.

    Randomness comes only from local generators keyed by ``(seed, epoch)`` for the order
    and ``(seed, epoch, batch)`` for augmentation, so an epoch replays exactly and can be
    resumed mid-way. Each pass uses the current `epoch` and then advances it by one;
    `set_epoch` pins the next pass.

    With ``with_labels=False`` the loader never reads ``data.labels``: it yields images only.

    Args:
        data: the images (and labels).
        batch_size: samples per batch.
        mean: per-channel mean on the [0, 1] scale.
        std: per-channel std on the [0, 1] scale.
        augment: ``"none"``, ``"crop"`` or ``"crop_flip"``.
        pad: crop padding in pixels; default `default_pad` of the image size.
        shuffle: draw a new order every epoch.
        drop_last: skip the final short batch.
        seed: seed of all randomness.
        with_labels: yield ``(images, labels)`` when the data has labels; False yields images only.
        num_shards / shard: data parallel training: ``batch_size`` is the global batch, and this
            loader yields its ``shard``-th contiguous ``batch_size // num_shards`` rows (same order,
            same augmentation as one process), so N processes see what one process would.
        device: where the uint8 images (and labels) live and batches are built: None keeps them on
            the host (the trainer copies each float batch over); a device such as ``"cuda"``
            copies them there once, so a step moves only its indices and augmentation draws
            (drawn on the host by the same generators: the batches equal the host path's).
        channels_last: yield batches stored NHWC (`torch.channels_last`), as ``train.channels_last``
            wants them; the uint8 pixels are NHWC already, so this saves a copy.

    Example:
        >>> data = ImageSet(np.zeros((10, 8, 8, 1), np.uint8), np.arange(10))
        >>> loader = BatchLoader(data, 4, mean=(0.5,), std=(0.5,))
        >>> [tuple(x.shape) for x, y in loader]
        [(4, 1, 8, 8), (4, 1, 8, 8), (2, 1, 8, 8)]
    """

    def __init__(
        self,
        data: ImageSet,
        batch_size: int,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        augment: str = "none",
        pad: int | None = None,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        with_labels: bool = True,
        num_shards: int = 1,
        shard: int = 0,
        device: torch.device | str | None = None,
        channels_last: bool = False,
    ) -> None:
        n, height, width, channels = data.images.shape
        super().__init__(
            n, batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed, num_shards=num_shards, shard=shard
        )
        if augment not in AUGMENTS:
            raise ConfigError(f"augment must be one of {AUGMENTS}, got {augment!r}")
        if len(mean) != channels or len(std) != channels:
            raise ConfigError(f"mean and std need {channels} values (one per channel), got {mean} and {std}")
        if min(std) <= 0:
            raise ConfigError(f"std must be positive, got {std}")
        self.augment = augment
        self.pad = default_pad(height, width) if pad is None else pad
        if self.pad < 0:
            raise ConfigError(f"pad must be >= 0, got {self.pad}")
        self.with_labels = with_labels
        self.device = None if device is None else torch.device(device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self._images = self._held(torch.from_numpy(np.ascontiguousarray(data.images)))
        labels = data.labels if with_labels else None  # the only place labels are read
        self._labels = (
            None if labels is None else self._held(torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)))
        )
        std_t = torch.tensor(std, dtype=torch.float32)
        self._scale = self._held((1.0 / (255.0 * std_t)).view(1, -1, 1, 1))
        self._shift = self._held((torch.tensor(mean, dtype=torch.float32) / std_t).view(1, -1, 1, 1))

    def _held(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` where batches are built (unchanged on the host path)."""
        return tensor if self.device is None else tensor.to(self.device, non_blocking=True)

    def _batch(self, index: Index, epoch: int, batch: int) -> Batch:
        n = (index.stop - index.start) if isinstance(index, slice) else len(index)
        rows = self._rows(n)
        index = slice(index.start + rows.start, index.start + rows.stop) if isinstance(index, slice) else index[rows]
        if isinstance(index, torch.Tensor):
            index = self._held(index)
        pixels = take(self._images, index)
        if self.augment != "none":
            pixels = self._crop(pixels, *map(self._held, self._draws(epoch, batch, n, rows)))
        x = pixels.permute(0, 3, 1, 2).to(torch.float32, memory_format=self.memory_format)
        x.mul_(self._scale).sub_(self._shift)
        return x if self._labels is None else (x, take(self._labels, index))

    def _draws(
        self, epoch: int, batch: int, total: int, rows: slice
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Crop offsets ``dy``, ``dx`` and flips (``[n, 1]`` each) of this shard's rows, on the host.

        They are drawn for the whole global batch of ``total`` images and ``rows`` of them used, so
        an image is augmented alike whatever the number of shards; the draws are tiny, so the
        device path draws them here too and gets the host path's batches.
        """
        gen = _generator(self.seed, epoch, batch)
        span = 2 * self.pad + 1
        dy = torch.randint(0, span, (total, 1), generator=gen)[rows]
        dx = torch.randint(0, span, (total, 1), generator=gen)[rows]
        flip = (
            torch.rand(total, 1, generator=gen)[rows] < 0.5
            if self.augment == "crop_flip"
            else torch.zeros_like(dy, dtype=torch.bool)
        )
        return dy, dx, flip

    def _crop(self, pixels: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        """Zero-padded crops at offsets ``dy``, ``dx`` (and flips) of NHWC uint8 pixels, in one gather."""
        n, height, width, channels = pixels.shape
        p = self.pad
        padded = pixels.new_zeros((n, height + 2 * p, width + 2 * p, channels))
        padded[:, p : p + height, p : p + width] = pixels
        cols = torch.arange(width, device=pixels.device).expand(n, width)
        cols = dx + torch.where(flip, cols.flip(1), cols)
        rows = dy + torch.arange(height, device=pixels.device)
        batch = torch.arange(n, device=pixels.device).view(n, 1, 1)
        return padded[batch, rows.unsqueeze(2), cols.unsqueeze(1)]

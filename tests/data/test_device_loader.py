"""`BatchLoader(device=...)`: batches built where the images live equal the host path's, bit for bit.

Both paths are checked against a plain numpy reference (pad, crop, flip, normalise per image) fed
with the loader's documented draws: the order from ``(seed, epoch)``, then ``dy``, ``dx`` and
flips of the global batch from ``(seed, epoch, batch)``.
"""

import numpy as np
import pytest
import torch

from qdistill.data import BatchLoader, ImageSet
from qdistill.data.loader import _generator

MEAN, STD = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
DEVICES = [None, "cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def make_set(n=22, size=5, channels=3) -> ImageSet:
    rng = np.random.default_rng(1)
    return ImageSet(rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8), rng.integers(0, 7, n))


def reference(data, batch_size, augment, pad, shuffle, seed, epoch, num_shards=1, shard=0):
    """The loader's batches of ``epoch`` computed image by image in numpy."""
    n, height, width, _ = data.images.shape
    order = torch.randperm(n, generator=_generator(seed, epoch)).numpy() if shuffle else np.arange(n)
    std = np.array(STD, np.float32)
    scale = (np.float32(1.0) / (np.float32(255.0) * std)).reshape(1, -1, 1, 1)
    shift = (np.array(MEAN, np.float32) / std).reshape(1, -1, 1, 1)
    out = []
    for b in range(0, n // batch_size):
        idx = order[b * batch_size : (b + 1) * batch_size]
        images = data.images[idx]
        if augment != "none":
            gen = _generator(seed, epoch, b)
            dy = torch.randint(0, 2 * pad + 1, (len(idx), 1), generator=gen).numpy()[:, 0]
            dx = torch.randint(0, 2 * pad + 1, (len(idx), 1), generator=gen).numpy()[:, 0]
            flip = (torch.rand(len(idx), 1, generator=gen) < 0.5).numpy()[:, 0] & (augment == "crop_flip")
            padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
            crops = [padded[i, y : y + height, x : x + width] for i, (y, x) in enumerate(zip(dy, dx))]
            images = np.stack([c[:, ::-1] if f else c for c, f in zip(crops, flip)])
        per = batch_size // num_shards
        rows = slice(shard * per, (shard + 1) * per)
        x = images[rows].transpose(0, 3, 1, 2).astype(np.float32) * scale - shift
        out.append((x, data.labels[idx][rows]))
    return out


def batches(loader):
    return [(x.cpu().numpy(), y.cpu().numpy()) for x, y in loader]


def assert_same(got, expected):
    assert len(got) == len(expected)
    for (x, y), (ex, ey) in zip(got, expected):
        np.testing.assert_array_equal(x, ex)  # bit for bit: the same float32 ops in the same order
        np.testing.assert_array_equal(y, ey)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("augment", ["none", "crop", "crop_flip"])
@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("num_shards, shard", [(1, 0), (2, 0), (2, 1)])
def test_batches_equal_the_numpy_reference(device, augment, shuffle, num_shards, shard):
    data = make_set()
    loader = BatchLoader(
        data, 6, mean=MEAN, std=STD, augment=augment, pad=2, shuffle=shuffle, drop_last=True, seed=3,
        num_shards=num_shards, shard=shard, device=device,
    )  # fmt: skip
    for e in (0, 1):
        expected = reference(data, 6, augment, 2, shuffle, 3, e, num_shards, shard)
        assert_same(batches(loader), expected)


@pytest.mark.parametrize("device", DEVICES)
def test_mid_epoch_resume_gives_the_rest_of_the_epoch(device):
    data = make_set()
    loader = BatchLoader(
        data, 4, mean=MEAN, std=STD, augment="crop_flip", pad=1, shuffle=True, drop_last=True, seed=5, device=device
    )
    loader.set_epoch(2, start_batch=3)
    assert_same(batches(loader), reference(data, 4, "crop_flip", 1, True, 5, 2)[3:])


@pytest.mark.parametrize("device", DEVICES)
def test_images_and_labels_live_on_the_device_and_batches_come_from_there(device):
    loader = BatchLoader(make_set(), 4, mean=MEAN, std=STD, augment="crop", shuffle=True, device=device)
    x, y = next(iter(loader))
    where = torch.device("cpu") if device is None else torch.device(device)
    assert loader._images.device.type == where.type and loader._images.dtype == torch.uint8
    assert x.device.type == where.type and y.device.type == where.type


@pytest.mark.parametrize("device", DEVICES)
def test_channels_last_batches_are_stored_nhwc_with_the_same_values(device):
    data = make_set()
    kw = {"mean": MEAN, "std": STD, "augment": "crop_flip", "shuffle": True, "device": device}
    plain, nhwc = BatchLoader(data, 4, **kw), BatchLoader(data, 4, channels_last=True, **kw)
    for (a, _), (b, _) in zip(plain, nhwc, strict=True):
        assert a.is_contiguous() and b.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(a, b)

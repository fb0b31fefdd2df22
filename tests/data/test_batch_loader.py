import doctest

import numpy as np
import pytest
import torch

import qdistill.data
from qdistill.data import BatchLoader, ImageSet, default_pad
from qdistill.data import loader as loader_module

IDENTITY = {"mean": (0.0, 0.0), "std": (1 / 255, 1 / 255)}  # x equals the raw pixel value


def make_set(n=10, size=6, channels=2, seed=0) -> ImageSet:
    rng = np.random.default_rng(seed)
    return ImageSet(rng.integers(1, 256, (n, size, size, channels), dtype=np.uint8), np.arange(n) % 3)


def pixels(x: torch.Tensor) -> np.ndarray:
    """NCHW floats of an IDENTITY loader back to NHWC uint8."""
    return np.round(x.permute(0, 2, 3, 1).numpy()).astype(np.uint8)


def epoch(loader: BatchLoader, e: int | None = None) -> list:
    if e is not None:
        loader.set_epoch(e)
    return [b if isinstance(b, torch.Tensor) else b[0] for b in loader]


@pytest.mark.parametrize("drop_last, sizes", [(False, [4, 4, 2]), (True, [4, 4])])
def test_shapes_len_and_order(drop_last, sizes):
    data = make_set()
    batches = list(BatchLoader(data, 4, drop_last=drop_last, **IDENTITY))
    assert len(BatchLoader(data, 4, drop_last=drop_last, **IDENTITY)) == len(sizes)
    assert [len(y) for _, y in batches] == sizes
    x, y = batches[0]
    assert x.shape == (4, 2, 6, 6) and x.dtype == torch.float32 and x.is_contiguous()
    assert y.dtype == torch.int64
    images = np.concatenate([pixels(x) for x, _ in batches])
    np.testing.assert_array_equal(images, data.images[: sum(sizes)])
    np.testing.assert_array_equal(torch.cat([y for _, y in batches]).numpy(), data.labels[: sum(sizes)])


def test_normalisation():
    data = make_set(channels=3)
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    (x, _), *_ = BatchLoader(data, 10, mean=mean, std=std)
    expected = (data.images / 255.0 - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(x.permute(0, 2, 3, 1).numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("augment", ["none", "crop", "crop_flip"])
def test_each_epoch_depends_only_on_seed_and_epoch(augment):
    data = make_set(n=33)
    make = lambda seed=0: BatchLoader(data, 8, augment=augment, shuffle=True, seed=seed, **IDENTITY)  # noqa: E731
    a, b = make(), make()
    epoch(b, 5)  # b's history differs, so only (seed, epoch) can make them agree
    for e in (3, 0):
        for xa, xb in zip(epoch(a, e), epoch(b, e), strict=True):
            assert torch.equal(xa, xb)
    assert not torch.equal(torch.cat(epoch(a, 0)), torch.cat(epoch(a, 1)))
    assert not torch.equal(torch.cat(epoch(a, 0)), torch.cat(epoch(make(seed=1), 0)))


def test_passes_advance_the_epoch_and_can_resume_mid_epoch():
    data = make_set(n=20)
    loader = BatchLoader(data, 6, augment="crop_flip", shuffle=True, **IDENTITY)
    first, second = epoch(loader), epoch(loader)
    assert loader.epoch == 2
    assert all(torch.equal(p, q) for p, q in zip(second, epoch(loader, 1), strict=True))
    loader.set_epoch(0, start_batch=2)
    resumed = epoch(loader)
    assert len(resumed) == 2 and all(torch.equal(p, q) for p, q in zip(resumed, first[2:], strict=True))
    with pytest.raises(ValueError):
        loader.set_epoch(0, start_batch=5)


def test_shuffle_is_a_permutation_and_leaves_global_rng_alone():
    data = make_set(n=25)
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    batches = list(BatchLoader(data, 7, shuffle=True, **IDENTITY))
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.random.get_state()[1].tolist() == np_state[1].tolist()
    labels = torch.cat([y for _, y in batches]).numpy()
    assert sorted(labels.tolist()) == sorted(data.labels.tolist())
    images = np.concatenate([pixels(x) for x, _ in batches])
    assert {img.tobytes() for img in images} == {img.tobytes() for img in data.images}


def crops_of(image: np.ndarray, pad: int, flips: bool) -> list[np.ndarray]:
    h, w, _ = image.shape
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    out = []
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[dy : dy + h, dx : dx + w]
            out += [crop, crop[:, ::-1]] if flips else [crop]
    return out


@pytest.mark.parametrize("augment, pad", [("crop", 2), ("crop_flip", 1), ("crop_flip", 0)])
def test_augmentation_is_a_zero_padded_crop_or_flip(augment, pad):
    data = make_set(n=40)
    loader = BatchLoader(data, 16, augment=augment, pad=pad, shuffle=False, **IDENTITY)
    out = np.concatenate([pixels(x) for x, _ in loader])
    assert out.shape == data.images.shape
    flipped = 0
    for original, augmented in zip(data.images, out, strict=True):
        candidates = crops_of(original, pad, flips=augment == "crop_flip")
        assert any(np.array_equal(augmented, c) for c in candidates)
        flipped += pad == 0 and not np.array_equal(augmented, original)
    if pad == 0:
        assert 5 < flipped < 35  # about half are flipped
    else:
        assert not np.array_equal(out, data.images)


def test_default_pad_by_size():
    assert [default_pad(s, s) for s in (8, 28, 32, 64)] == [1, 2, 4, 4]
    assert BatchLoader(make_set(size=28, channels=1), 2, mean=(0.5,), std=(0.5,)).pad == 2


def _touched(*args, **kwargs):
    raise AssertionError("labels were touched")


class PoisonLabels:
    """Raises on any use: len, indexing, iteration, numpy conversion, attributes, comparison."""

    __len__ = __getitem__ = __iter__ = __array__ = __bool__ = __index__ = __int__ = __eq__ = __getattr__ = _touched
    __hash__ = None


def test_with_labels_false_never_touches_labels():
    data = make_set(n=9)
    object.__setattr__(data, "labels", PoisonLabels())  # bypasses ImageSet's validation, which reads labels
    with pytest.raises(AssertionError, match="touched"):  # the poison works...
        list(BatchLoader(data, 4, augment="crop_flip", shuffle=True, **IDENTITY))
    loader = BatchLoader(data, 4, augment="crop_flip", shuffle=True, with_labels=False, **IDENTITY)
    batches = list(loader) + epoch(loader, 3)  # ...and label-free iteration never trips it
    assert all(isinstance(x, torch.Tensor) and x.shape[1:] == (2, 6, 6) for x in batches)
    assert data.without_labels().labels is None


def test_unlabelled_data_yields_images_only():
    loader = BatchLoader(make_set().without_labels(), 5, **IDENTITY)
    assert all(isinstance(x, torch.Tensor) for x in loader)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"augment": "flip"}, "augment"),
        ({"mean": (0.5,)}, "one per channel"),
        ({"std": (0.5, 0.0)}, "positive"),
        ({"batch_size": 0}, "batch_size"),
        ({"pad": -1}, "pad"),
    ],
)
def test_rejects_bad_arguments(kwargs, match):
    args = {"batch_size": 2, **IDENTITY, **kwargs}
    with pytest.raises(ValueError, match=match):
        BatchLoader(make_set(), **args)


@pytest.mark.parametrize("module", [qdistill.data, loader_module])
def test_docstring_examples(module):
    result = doctest.testmod(module, extraglobs={"np": np, "ImageSet": ImageSet})
    assert result.failed == 0 and result.attempted > 0

import numpy as np
import pytest

from qdistill.data import DataSplits, ImageSet, channel_stats, split_holdout


def make_set(counts=(10, 20, 30), size=4, channels=1) -> ImageSet:
    labels = np.repeat(np.arange(len(counts)), counts)
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (len(labels), size, size, channels), dtype=np.uint8)
    return ImageSet(images, labels, tuple(f"c{i}" for i in range(len(counts))))


def test_imageset_normalises_inputs():
    s = ImageSet(np.zeros((3, 4, 5), np.uint8), np.array([0, 1, 2], np.int32))
    assert s.images.shape == (3, 4, 5, 1) and s.labels.dtype == np.int64
    assert len(s) == 3 and s.image_shape == (4, 5, 1)
    assert repr(s) == "ImageSet(n=3, size=4x5x1, labels=int64, classes=?)"


@pytest.mark.parametrize(
    "images, labels, classes, error",
    [
        (np.zeros((2, 4, 4, 1), np.float32), None, None, TypeError),
        (np.zeros((2, 4), np.uint8), None, None, ValueError),
        (np.zeros((2, 4, 4, 1), np.uint8), np.array([0, 1, 2]), None, ValueError),
        (np.zeros((2, 4, 4, 1), np.uint8), np.array([0.0, 1.0]), None, TypeError),
        (np.zeros((2, 4, 4, 1), np.uint8), np.array([0, -1]), None, ValueError),
        (np.zeros((2, 4, 4, 1), np.uint8), np.array([0, 2]), ("a", "b"), ValueError),
    ],
)
def test_imageset_rejects_bad_inputs(images, labels, classes, error):
    with pytest.raises(error):
        ImageSet(images, labels, classes)


def test_subset_and_without_labels():
    s = make_set()
    sub = s.subset(np.array([5, 0, 59]))
    np.testing.assert_array_equal(sub.images, s.images[[5, 0, 59]])
    np.testing.assert_array_equal(sub.labels, [0, 0, 2])
    assert sub.classes == s.classes
    masked = s.subset(s.labels == 1)
    assert len(masked) == 20 and set(masked.labels) == {1}
    bare = s.without_labels()
    assert bare.labels is None and bare.images is s.images and bare.classes == s.classes


def test_split_holdout_is_stratified_disjoint_and_deterministic():
    s = make_set()
    rest, hold = split_holdout(s, 0.2, seed=3)
    assert len(hold) == 12 and len(rest) == 48
    np.testing.assert_array_equal(np.bincount(hold.labels), [2, 4, 6])
    # disjoint and covering: the images are distinct random arrays, so compare their bytes
    keys = lambda part: {img.tobytes() for img in part.images}  # noqa: E731
    assert keys(rest).isdisjoint(keys(hold)) and keys(rest) | keys(hold) == keys(s)
    rest2, hold2 = split_holdout(s, 0.2, seed=3)
    np.testing.assert_array_equal(hold.images, hold2.images)
    _, hold_other = split_holdout(s, 0.2, seed=4)
    assert not np.array_equal(hold.images, hold_other.images)


def test_split_holdout_rounds_per_class_to_the_total():
    s = make_set(counts=(3, 3, 3, 5))
    rest, hold = split_holdout(s, 0.25, seed=0)
    assert len(hold) == 4 and len(rest) == 10  # round(0.25 * 14) == 4 (banker's rounding of 3.5)
    assert np.all(np.bincount(hold.labels, minlength=4) <= [1, 1, 1, 2])


def test_split_holdout_without_labels():
    s = make_set().without_labels()
    rest, hold = split_holdout(s, 0.5, seed=0)
    assert rest.labels is None and hold.labels is None and len(rest) == len(hold) == 30


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 0.001])
def test_split_holdout_rejects_degenerate_fractions(fraction):
    with pytest.raises(ValueError, match="fraction"):
        split_holdout(make_set(), fraction)


def test_channel_stats_matches_float_computation():
    s = make_set(channels=3)
    mean, std = channel_stats(s.images)
    x = s.images.astype(np.float64) / 255
    np.testing.assert_allclose(mean, x.mean(axis=(0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(std, x.std(axis=(0, 1, 2)), rtol=1e-12)
    assert channel_stats(np.zeros((2, 2, 2, 1), np.uint8)) == ((0.0,), (1.0,))


def test_datasplits_validates_stats_and_augment():
    train = make_set(channels=3)
    DataSplits(train, None, 3, (0.5,) * 3, (0.2,) * 3, "crop_flip")
    with pytest.raises(ValueError, match="one value per channel"):
        DataSplits(train, None, 3, (0.5,), (0.2,) * 3, "none")
    with pytest.raises(ValueError, match="positive"):
        DataSplits(train, None, 3, (0.5,) * 3, (0.0,) * 3, "none")
    with pytest.raises(ValueError, match="augment"):
        DataSplits(train, None, 3, (0.5,) * 3, (0.2,) * 3, "flip")
    with pytest.raises(ValueError, match="differ"):
        DataSplits(train, make_set(channels=1), 3, (0.5,) * 3, (0.2,) * 3, "none")

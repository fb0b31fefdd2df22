"""Datasets held in memory as uint8 arrays, and a deterministic batch loader.

Example:
    >>> from qdistill.data import BatchLoader, load_dataset
    >>> data = load_dataset("digits")
    >>> loader = BatchLoader(data.train, 64, mean=data.mean, std=data.std, augment=data.augment, shuffle=True)
    >>> images, labels = next(iter(loader))
    >>> tuple(images.shape), labels.dtype
    ((64, 1, 8, 8), torch.int64)
"""

from .cache import default_cache_dir
from .decode import decode_images
from .formats import DATASET_FORMATS, DatasetFormat, list_formats, load_dataset
from .imageset import AUGMENTS, DataSplits, ImageSet, channel_stats, split_holdout
from .loader import BatchLoader, default_pad

__all__ = [
    "AUGMENTS",
    "DATASET_FORMATS",
    "BatchLoader",
    "DataSplits",
    "DatasetFormat",
    "ImageSet",
    "channel_stats",
    "decode_images",
    "default_cache_dir",
    "default_pad",
    "list_formats",
    "load_dataset",
    "split_holdout",
]

"""Datasets held in memory as uint8 arrays (or token blocks, for text), and deterministic batch loaders.

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
from .text import TextBlockLoader, TextSplits, load_text, read_text_units

__all__ = [
    "AUGMENTS",
    "DATASET_FORMATS",
    "BatchLoader",
    "DataSplits",
    "DatasetFormat",
    "ImageSet",
    "TextBlockLoader",
    "TextSplits",
    "channel_stats",
    "decode_images",
    "default_cache_dir",
    "default_pad",
    "list_formats",
    "load_dataset",
    "load_text",
    "read_text_units",
    "split_holdout",
]

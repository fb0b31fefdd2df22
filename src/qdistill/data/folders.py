"""Image-folder layouts (class subfolders, Tiny-ImageNet, unlabelled) from a directory or tar archive."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import numpy as np

from ..errors import DataError
from .decode import decode_images
from .imageset import ImageSet
from .sources import Source, is_image

__all__ = ["IMAGEFOLDER_LAYOUT", "UNLABELLED_LAYOUT", "load_imagefolder", "load_unlabelled"]

IMAGEFOLDER_LAYOUT = (
    "train/<class>/*.jpg with optional test/<class>/ or val/<class>/, or just <class>/*.jpg, "
    "or Tiny-ImageNet (train/<wnid>/images/, val/images/ + val/val_annotations.txt)"
)
UNLABELLED_LAYOUT = "a folder of images, searched recursively"
_SPLIT_DIRS = ("train", "test", "val")
_TINY_ANNOTATIONS = "val/val_annotations.txt"


def _strip_top(files: Sequence[str]) -> tuple[str, list[str]]:
    """Skips single wrapper folders, e.g. ``cifar10-jpeg/`` in ``cifar10-jpeg/train/cat/1.jpg``.

    A folder is skipped while it is the only top-level entry holding images, holds none
    directly, and is not itself a split folder (``train``, ``test``, ``val``).
    """
    prefix = ""
    files = [f for f in files if is_image(f) or f.endswith(_TINY_ANNOTATIONS)]
    while files:
        heads = {f.split("/", 1)[0] for f in files}
        head = next(iter(heads))
        if len(heads) > 1 or head in _SPLIT_DIRS or any(f.count("/") < 2 for f in files):
            break
        prefix += head + "/"
        files = [f.split("/", 1)[1] for f in files]
    return prefix, files


def _by_class(files: Sequence[str], folder: str) -> dict[str, list[str]]:
    """Images under ``folder/<class>/...`` grouped by class; `folder` may be empty."""
    start = len(folder) + 1 if folder else 0
    groups: dict[str, list[str]] = {}
    for f in files:
        if is_image(f) and (not folder or f.startswith(folder + "/")):
            rest = f[start:]
            if "/" in rest:
                groups.setdefault(rest.split("/", 1)[0], []).append(f)
    return groups


def _tiny_val(source: Source, prefix: str, files: Sequence[str]) -> dict[str, list[str]]:
    """Tiny-ImageNet ``val/images/*`` grouped by the wnid in ``val/val_annotations.txt``."""
    text = source.read(prefix + _TINY_ANNOTATIONS).decode("utf-8", errors="replace")
    wnid = {}
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) >= 2:
            wnid[fields[0]] = fields[1]
    groups: dict[str, list[str]] = {}
    for f in files:
        if f.startswith("val/images/") and is_image(f):
            name = f.rsplit("/", 1)[1]
            if name not in wnid:
                raise DataError(f"{source.display(prefix + f)} is missing from {_TINY_ANNOTATIONS}")
            groups.setdefault(wnid[name], []).append(f)
    return groups


def _decode_groups(
    source: Source, prefix: str, groups: list[dict[str, list[str]]], classes: tuple[str, ...]
) -> list[ImageSet]:
    """Decodes several class-grouped splits together, so they share one size and mode."""
    index = {c: i for i, c in enumerate(classes)}
    names: list[str] = []
    labels: list[int] = []
    counts = []
    for group in groups:
        for cls in sorted(group):
            names += group[cls]
            labels += [index[cls]] * len(group[cls])
        counts.append(sum(len(v) for v in group.values()))
    images = decode_images([source.read(prefix + n) for n in names], [source.display(prefix + n) for n in names])
    label_array = np.asarray(labels, dtype=np.int64)
    bounds = np.cumsum([0] + counts)
    return [ImageSet(images[a:b], label_array[a:b], classes) for a, b in pairwise(bounds)]


def _check_classes(where: str, train: dict[str, list[str]], test: dict[str, list[str]], test_dir: str) -> None:
    """Refuses a class list that cannot be what the user meant: one class, or train and test disagreeing."""
    if len(train) < 2:
        raise DataError(
            f"{where} has a single class folder ({', '.join(train)}); a labelled dataset needs at least two, "
            f"expected {IMAGEFOLDER_LAYOUT}, or use the 'unlabelled' format"
        )
    if test and set(test) != set(train):
        extra, missing = sorted(set(test) - set(train)), sorted(set(train) - set(test))
        problems = [f"has classes missing from train: {', '.join(extra[:5])}"] if extra else []
        problems += [f"lacks train classes: {', '.join(missing[:5])}"] if missing else []
        raise DataError(f"{where}/{test_dir} {'; '.join(problems)}")


def load_imagefolder(source: Source) -> tuple[ImageSet, ImageSet | None]:
    """Class-labelled images; class names are the sorted train subfolder names.

    Returns:
        ``(train, test)``; test is None when there is no ``test/`` or ``val/`` folder.

    Raises:
        DataError: no images, loose images, a ``test/`` or ``val/`` folder without ``train/``,
            a single class, or test classes that differ from the train classes.
    """
    prefix, files = _strip_top(source.files)
    if not files:
        raise DataError(f"no images found in {source.display()}")
    where = source.display(prefix.rstrip("/"))
    test_dir = ""
    if any(f.startswith("train/") for f in files):
        train = _by_class(files, "train")
        if _TINY_ANNOTATIONS in files:
            test, test_dir = _tiny_val(source, prefix, files), "val"
        else:
            test_dir = "test" if _by_class(files, "test") else "val"
            test = _by_class(files, test_dir)
        if not train:
            raise DataError(f"no class subfolders with images in {where}/train; expected {IMAGEFOLDER_LAYOUT}")
    else:
        loose = [f for f in files if "/" not in f]
        if loose:
            raise DataError(
                f"{where} holds images outside class subfolders (e.g. {loose[0]}); expected {IMAGEFOLDER_LAYOUT}, "
                "or use the 'unlabelled' format"
            )
        train, test = _by_class(files, ""), {}
        split_dirs = [f"{d}/" for d in sorted(set(train) & set(_SPLIT_DIRS))]
        if split_dirs:
            raise DataError(f"{where} has {', '.join(split_dirs)} but no train/ folder; expected {IMAGEFOLDER_LAYOUT}")
    _check_classes(where, train, test, test_dir)
    classes = tuple(sorted(train))
    splits = _decode_groups(source, prefix, [train, test] if test else [train], classes)
    return splits[0], (splits[1] if test else None)


def load_unlabelled(source: Source) -> tuple[ImageSet, None]:
    """Every image under the folder (recursively, in path order), without labels."""
    names = [f for f in source.files if is_image(f)]
    if not names:
        raise DataError(f"no images found in {source.display()}")
    images = decode_images([source.read(n) for n in names], [source.display(n) for n in names])
    return ImageSet(images, None), None

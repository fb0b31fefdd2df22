"""Decoding encoded images (JPEG, PNG, ...) into one ``uint8 [N, H, W, C]`` array with Pillow."""

from __future__ import annotations

import io
import multiprocessing
import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from PIL import Image

from ..errors import ConfigError, DataError

__all__ = ["decode_image", "decode_images", "default_workers"]

PARALLEL_MIN = 4096  # below this many images a process pool costs more than it saves
_CHUNK = 1024
_BILINEAR = getattr(Image, "Resampling", Image).BILINEAR  # Pillow < 9.1 has no Resampling
_GRAY_MODES = frozenset({"1", "L", "LA"})
_WIDE_GRAY_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})  # 16/32-bit integer pixels
_UINT16_MAX = 65535


def default_workers() -> int:
    """Decoder processes: env ``QDISTILL_DECODE_WORKERS``, else the usable CPU count (at most 8)."""
    env = os.environ.get("QDISTILL_DECODE_WORKERS")
    if env:
        if not env.strip().isdigit():
            raise ConfigError(f"QDISTILL_DECODE_WORKERS must be a whole number, got {env!r}")
        return max(1, int(env))
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 8))


def _wide_to_uint8(pixels: np.ndarray, name: str) -> np.ndarray:
    """16-bit grey levels 0..65535 onto the nearest of 0..255 (v / 257, rounded).

    Pillow's own ``convert("L")`` clips instead, turning almost every pixel of a 16-bit
    image white. 32-bit images are read the same way when their values fit 16 bits.
    """
    low, high = int(pixels.min()), int(pixels.max())
    if low < 0 or high > _UINT16_MAX:
        raise DataError(f"{name}: integer pixels {low}..{high} do not fit 16 bits; convert the image to 8-bit")
    return ((pixels.astype(np.uint32) * 255 + _UINT16_MAX // 2) // _UINT16_MAX).astype(np.uint8)


def decode_image(blob: bytes, name: str) -> np.ndarray:
    """Decodes one image to ``uint8 [H, W]`` (grayscale) or ``[H, W, 3]`` (anything else, as RGB).

    16-bit grayscale is scaled to 8 bits; floating-point images are refused (their range is unknown).

    Raises:
        DataError: naming `name` when the bytes are not a readable image.
    """
    try:
        with Image.open(io.BytesIO(blob)) as im:
            im.load()
            if im.mode in _WIDE_GRAY_MODES:
                return _wide_to_uint8(np.asarray(im), name)
            if im.mode == "F":
                raise DataError(f"{name}: floating-point pixels (mode F) are not supported; convert to 8-bit")
            mode = "L" if im.mode in _GRAY_MODES else "RGB"
            return np.asarray(im if im.mode == mode else im.convert(mode), dtype=np.uint8)
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - Pillow raises several types (OSError, SyntaxError, ...)
        raise DataError(f"cannot decode image {name}: {err}") from None


def _decode_chunk(blobs: Sequence[bytes], names: Sequence[str]) -> list[np.ndarray] | np.ndarray:
    arrays = [decode_image(b, n) for b, n in zip(blobs, names, strict=True)]
    if len({a.shape for a in arrays}) == 1:
        return np.stack(arrays)  # one array crosses the process boundary much faster than many
    return arrays


def _decode_all(blobs: Sequence[bytes], names: Sequence[str], workers: int) -> list[np.ndarray]:
    if workers <= 1 or len(blobs) < PARALLEL_MIN or "fork" not in multiprocessing.get_all_start_methods():
        return [decode_image(b, n) for b, n in zip(blobs, names, strict=True)]
    # fork: workers need only Pillow and numpy, and skip re-importing torch
    starts = range(0, len(blobs), _CHUNK)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        parts = pool.map(
            _decode_chunk, [blobs[s : s + _CHUNK] for s in starts], [names[s : s + _CHUNK] for s in starts]
        )
        return [a for part in parts for a in part]


def decode_images(blobs: Sequence[bytes], names: Sequence[str], workers: int | None = None) -> np.ndarray:
    """Decodes encoded images into one array, converting modes and sizes to a common one.

    Every image becomes RGB unless all are grayscale (then ``C == 1``). Images whose
    size differs from the most common size are resized to it (bilinear).

    Args:
        blobs: the encoded files.
        names: one name per blob, used in error messages.
        workers: decoder processes; default `default_workers`. Small inputs decode in-process.

    Returns:
        ``uint8 [N, H, W, C]``.
    """
    if len(blobs) != len(names):
        raise ValueError(f"got {len(blobs)} blobs but {len(names)} names")
    if not blobs:
        raise DataError("no images to decode")
    arrays = _decode_all(list(blobs), list(names), default_workers() if workers is None else workers)
    rgb = any(a.ndim == 3 for a in arrays)
    (height, width), _ = Counter(a.shape[:2] for a in arrays).most_common(1)[0]
    out = np.empty((len(arrays), height, width, 3 if rgb else 1), dtype=np.uint8)
    for i, a in enumerate(arrays):
        if a.shape[:2] != (height, width):
            a = np.asarray(Image.fromarray(a).resize((width, height), _BILINEAR))
        out[i] = a[..., None] if a.ndim == 2 else a  # broadcasting repeats gray over RGB
    return out

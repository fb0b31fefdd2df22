"""An on-disk cache of decoded datasets as uncompressed ``.npz`` files, keyed by the data's content.

Where: ``cache_dir`` if given, else env ``QDISTILL_CACHE``, else ``~/.cache/qdistill``; the value
``off`` (also ``none``, ``0``, ``false``, ``no``) turns caching off. An entry is about the size of
the decoded pixels (CIFAR-10 as 60,000 32x32 RGB images: 185 MB) and can be deleted at any time.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np

from .sources import unreadable

__all__ = [
    "CACHE_ENV",
    "CACHE_VERSION",
    "cache_file",
    "default_cache_dir",
    "fingerprint",
    "read_cache",
    "resolve_cache_dir",
    "write_cache",
]

CACHE_VERSION = 2  # bump when the decoded content of any format, or the key, changes
CACHE_ENV = "QDISTILL_CACHE"
CACHE_OFF = frozenset({"off", "none", "0", "false", "no"})
FULL_HASH_MAX = 1 << 30  # files up to 1 GiB are hashed whole (about 1 s); larger ones by their ends
_EDGE = 1 << 20
_HASH_CHUNK = 1 << 22


def resolve_cache_dir(cache_dir: str | Path | bool | None = None) -> Path | None:
    """The cache folder: `cache_dir`, else env ``QDISTILL_CACHE``, else ``~/.cache/qdistill``; None when off.

    ``False`` means off too: YAML reads ``cache_dir: off`` as a boolean.
    """
    value = os.environ.get(CACHE_ENV) if cache_dir is None else cache_dir
    if value is False:
        return None
    if value is None or value is True or str(value).strip() == "":
        return Path.home() / ".cache" / "qdistill"
    if str(value).strip().lower() in CACHE_OFF:
        return None
    return Path(value).expanduser()


def default_cache_dir() -> Path | None:
    """Env ``QDISTILL_CACHE`` if set (None when it says ``off``), else ``~/.cache/qdistill``."""
    return resolve_cache_dir(None)


def _file_digest(path: Path, size: int, mtime_ns: int) -> str:
    """sha256 of the whole file, or for a file over `FULL_HASH_MAX` of its size, mtime and first and last MiB."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= FULL_HASH_MAX:
            while chunk := f.read(_HASH_CHUNK):
                digest.update(chunk)
        else:
            digest.update(f"{size}|{mtime_ns}|".encode())
            digest.update(f.read(_EDGE))
            f.seek(size - _EDGE)
            digest.update(f.read(_EDGE))
    return digest.hexdigest()


def fingerprint(path: str | Path) -> str:
    """A key that follows the data, not the path to it.

    A file (an archive) is keyed by its content, so copies and links at other paths share one
    entry. A directory is keyed by the relative name, size and mtime of every file under it:
    any added, removed, resized or touched file changes the key, wherever the folder lives.
    """
    path = Path(path).expanduser().resolve()
    try:
        st = path.stat()
        if not path.is_dir():
            return "file|" + _file_digest(path, st.st_size, st.st_mtime_ns)
        parts = ["dir"]
        for dirpath, dirnames, filenames in os.walk(path, followlinks=True):
            dirnames.sort()
            for name in sorted(filenames):
                full = os.path.join(dirpath, name)
                fst = os.stat(full)
                parts.append(f"{Path(os.path.relpath(full, path)).as_posix()}|{fst.st_size}|{fst.st_mtime_ns}")
    except OSError as err:
        raise unreadable(err) from None
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def cache_file(cache_dir: str | Path, fmt: str, path: str | Path) -> Path:
    """Where the cache of format `fmt` read from `path` lives (the same for every path to the same data)."""
    key = hashlib.sha256(f"v{CACHE_VERSION}|{fmt}|{fingerprint(path)}".encode()).hexdigest()[:20]
    return Path(cache_dir).expanduser() / f"{fmt}-{key}.npz"


def read_cache(file: Path) -> dict[str, np.ndarray] | None:
    """The arrays in `file`, or None when it is missing or unreadable (a warning says why)."""
    if not file.is_file():
        return None
    try:
        with np.load(file, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        warnings.warn(f"ignoring unreadable dataset cache {file}: {err}", stacklevel=3)
        return None


def write_cache(file: Path, arrays: dict[str, np.ndarray]) -> None:
    """Writes `arrays` atomically (temporary file, then rename); warns instead of failing."""
    tmp = None
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=file.parent, prefix=f".{file.name}.", suffix=".tmp", delete=False) as f:
            tmp = f.name
            np.savez(f, **arrays)
        os.replace(tmp, file)
    except OSError as err:
        warnings.warn(f"could not write dataset cache {file}: {err}", stacklevel=3)
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)

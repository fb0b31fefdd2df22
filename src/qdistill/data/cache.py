"""An on-disk cache of decoded datasets as uncompressed ``.npz`` files."""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np

__all__ = ["CACHE_VERSION", "cache_file", "default_cache_dir", "fingerprint", "read_cache", "write_cache"]

CACHE_VERSION = 1  # bump when the decoded content of any format changes


def default_cache_dir() -> Path:
    """Env ``QDISTILL_CACHE`` if set, else ``~/.cache/qdistill``."""
    env = os.environ.get("QDISTILL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "qdistill"


def fingerprint(path: str | Path) -> str:
    """Absolute path, size and mtime of a file, or of every file under a directory.

    Any added, removed, resized or touched file changes the fingerprint.
    """
    path = Path(path).expanduser().resolve()
    st = path.stat()
    parts = [str(path)]
    if path.is_dir():
        for dirpath, dirnames, filenames in os.walk(path, followlinks=True):
            dirnames.sort()
            for name in sorted(filenames):
                full = os.path.join(dirpath, name)
                fst = os.stat(full)
                parts.append(f"{os.path.relpath(full, path)}|{fst.st_size}|{fst.st_mtime_ns}")
    else:
        parts.append(f"{st.st_size}|{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def cache_file(cache_dir: str | Path, fmt: str, path: str | Path) -> Path:
    """Where the cache of format `fmt` read from `path` lives."""
    key = hashlib.sha256(f"v{CACHE_VERSION}|{fmt}|{fingerprint(path)}".encode()).hexdigest()[:20]
    stem = Path(path).name.split(".")[0] or "data"
    return Path(cache_dir).expanduser() / f"{fmt}-{stem}-{key}.npz"


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

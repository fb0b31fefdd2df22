"""Uniform read-only access to the files of a directory or of a tar archive."""

from __future__ import annotations

import os
import posixpath
import tarfile
import zlib
from pathlib import Path

__all__ = ["IMAGE_EXTENSIONS", "DirSource", "Source", "TarSource", "is_archive", "is_image", "open_source"]

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".pbm", ".pnm", ".tif", ".tiff"}
)
_ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


def is_image(name: str) -> bool:
    """Whether a file name has a known image extension (case-insensitive)."""
    return posixpath.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def is_archive(path: str | Path) -> bool:
    """Whether `path` names a tar archive (by its suffix)."""
    return str(path).lower().endswith(_ARCHIVE_SUFFIXES)


def _hidden(rel: str) -> bool:
    # dot files, macOS resource forks (._x) and __MACOSX folders are never data
    return any(part.startswith(".") or part == "__MACOSX" for part in rel.split("/"))


class Source:
    """The regular files under one directory or inside one tar archive.

    Attributes:
        path: the directory or archive.
        files: sorted relative POSIX paths of the (non-hidden) regular files.
    """

    path: Path
    files: tuple[str, ...]

    def read(self, rel: str) -> bytes:
        """The bytes of the file at relative path `rel`."""
        raise NotImplementedError

    def display(self, rel: str = "") -> str:
        """A name for messages: the path, or the file inside it."""
        if not rel:
            return str(self.path)
        sep = ":" if isinstance(self, TarSource) else os.sep
        return f"{self.path}{sep}{rel}"


class DirSource(Source):
    """Files under a directory, walked recursively (following symlinks) and read on demand."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        found = []
        for dirpath, dirnames, filenames in os.walk(self.path, followlinks=True):
            dirnames.sort()
            rel_dir = Path(dirpath).relative_to(self.path).as_posix()
            for name in filenames:
                rel = name if rel_dir == "." else f"{rel_dir}/{name}"
                if not _hidden(rel):
                    found.append(rel)
        self.files = tuple(sorted(found))

    def read(self, rel: str) -> bytes:
        return (self.path / rel).read_bytes()


class TarSource(Source):
    """Files inside a (possibly compressed) tar archive, read into memory in one sequential pass.

    Nothing is extracted to disk; member names are normalised, so ``./a/b`` becomes ``a/b``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._blobs: dict[str, bytes] = {}
        try:
            with tarfile.open(self.path, mode="r:*") as tar:
                for member in tar:
                    rel = posixpath.normpath(member.name).lstrip("/")
                    if not member.isfile() or rel.startswith("..") or _hidden(rel):
                        continue
                    handle = tar.extractfile(member)
                    if handle is not None:
                        self._blobs[rel] = handle.read()
        except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
            raise ValueError(f"cannot read archive {self.path}: {err}") from err
        self.files = tuple(sorted(self._blobs))

    def read(self, rel: str) -> bytes:
        return self._blobs[rel]


def open_source(path: str | Path) -> Source:
    """A `TarSource` for a tar archive, else a `DirSource` for a directory."""
    path = Path(path).expanduser()
    if path.is_file() and (is_archive(path) or tarfile.is_tarfile(path)):
        return TarSource(path)
    if path.is_dir():
        return DirSource(path)
    raise ValueError(f"{path} is neither a directory nor a tar archive")

"""Uniform read-only access to the files of a directory or of a tar or zip archive."""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import posixpath
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from ..errors import DataError

__all__ = [
    "IMAGE_EXTENSIONS",
    "DirSource",
    "Source",
    "TarSource",
    "ZipSource",
    "is_archive",
    "is_hidden",
    "is_image",
    "open_source",
    "unreadable",
]

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".pbm", ".pnm", ".tif", ".tiff"}
)
_ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".zip")
_READ_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, zlib.error, lzma.LZMAError)
_COMPRESSED: tuple[tuple[bytes, Callable[..., BinaryIO]], ...] = (
    (b"\x1f\x8b", gzip.open),
    (b"BZh", bz2.open),
    (b"\xfd7zXZ\x00", lzma.open),
)
_CHUNK = 1 << 20


def is_image(name: str) -> bool:
    """Whether a file name has a known image extension (case-insensitive)."""
    return posixpath.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def is_archive(path: str | Path) -> bool:
    """Whether `path` names a tar or zip archive (by its suffix)."""
    return str(path).lower().endswith(_ARCHIVE_SUFFIXES)


def is_hidden(rel: str) -> bool:
    """Whether a relative path is never data: dot files, macOS resource forks (``._x``), ``__MACOSX``."""
    return any(part.startswith(".") or part == "__MACOSX" for part in rel.split("/"))


class Source:
    """The regular files under one directory or inside one tar or zip archive.

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
        sep = os.sep if isinstance(self, DirSource) else ":"
        return f"{self.path}{sep}{rel}"


def unreadable(err: OSError) -> DataError:
    """The one-line error for a file or folder the OS will not read (missing, a broken link, no permission)."""
    return DataError(f"cannot read {err.filename}: {err.strerror}")


def _raise_unreadable(err: OSError) -> None:
    raise unreadable(err) from None


class DirSource(Source):
    """Files under a directory, walked recursively (following symlinks) and read on demand.

    Raises:
        DataError: a folder or file that cannot be read (never skipped silently).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        found = []
        for dirpath, dirnames, filenames in os.walk(self.path, onerror=_raise_unreadable, followlinks=True):
            dirnames.sort()
            rel_dir = Path(dirpath).relative_to(self.path).as_posix()
            for name in filenames:
                rel = name if rel_dir == "." else f"{rel_dir}/{name}"
                if not is_hidden(rel):
                    found.append(rel)
        self.files = tuple(sorted(found))

    def read(self, rel: str) -> bytes:
        try:
            return (self.path / rel).read_bytes()
        except OSError as err:
            raise unreadable(err) from None


class _LastBlock:
    """Passes reads through to a file and keeps the last tar block (512 bytes) read.

    `tarfile` ends its iteration at the first unreadable header without saying so; the
    block it stopped at tells a proper end-of-archive marker (zeros) from damage.
    """

    def __init__(self, fileobj: BinaryIO) -> None:
        self._file = fileobj
        self.block: bytes | None = None

    def read(self, size: int = -1) -> bytes:
        data = self._file.read(size)
        if size == tarfile.BLOCKSIZE:
            self.block = data
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()


def _open_decompressed(path: Path) -> BinaryIO:
    """`path` opened for reading, through gzip, bzip2 or xz when its first bytes say so."""
    with open(path, "rb") as f:
        head = f.read(6)
    opener = next((op for magic, op in _COMPRESSED if head.startswith(magic)), None)
    return opener(path, "rb") if opener is not None else open(path, "rb")


def _check_tar_end(tap: _LastBlock, raw: BinaryIO, members: int) -> None:
    """Raises unless the tar stream ended at its end-of-archive marker with only zeros after it.

    Reading to the end also makes gzip, bzip2 and xz verify their checksums and lengths.
    """
    if not tap.block:
        raise DataError(f"ends after {members} files without an end-of-archive marker (truncated?)")
    if tap.block.count(0) != len(tap.block):
        raise DataError(f"unreadable tar header after {members} files (the archive is damaged)")
    while chunk := raw.read(_CHUNK):
        if chunk.count(0) != len(chunk):
            raise DataError(f"data after the end-of-archive marker (after {members} files; damaged?)")


def _blob_name(rel: str) -> str | None:
    """`rel` normalised (``./a/b`` -> ``a/b``), or None for names outside the root and hidden files."""
    rel = posixpath.normpath(rel).lstrip("/")
    return None if rel.startswith("..") or rel == "." or is_hidden(rel) else rel


class _InMemory(Source):
    """An archive whose files were all read (and checked) when it was opened."""

    _blobs: dict[str, bytes]

    def read(self, rel: str) -> bytes:
        return self._blobs[rel]


class TarSource(_InMemory):
    """Files inside a (possibly compressed) tar archive, read into memory in one sequential pass.

    Nothing is extracted to disk. The whole archive is read to its end, so a damaged or
    truncated archive fails here instead of silently losing the files after the damage.

    Raises:
        DataError: naming the archive, on any read error, checksum mismatch or truncation.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._blobs: dict[str, bytes] = {}
        try:
            with _open_decompressed(self.path) as raw:
                tap = _LastBlock(raw)
                with tarfile.open(fileobj=tap, mode="r:") as tar:  # type: ignore[call-overload]
                    for member in tar:
                        rel = _blob_name(member.name)
                        handle = tar.extractfile(member) if member.isfile() and rel else None
                        if handle is not None:
                            self._blobs[rel] = handle.read()
                _check_tar_end(tap, raw, len(self._blobs))
        except (DataError, *_READ_ERRORS) as err:
            raise DataError(f"cannot read archive {self.path}: {err}") from None
        self.files = tuple(sorted(self._blobs))


class ZipSource(_InMemory):
    """Files inside a zip archive, all read (and CRC-checked) when it is opened.

    Raises:
        DataError: naming the archive, on a damaged archive or member.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._blobs: dict[str, bytes] = {}
        try:
            with zipfile.ZipFile(self.path) as archive:
                for info in archive.infolist():
                    rel = _blob_name(info.filename)
                    if rel and not info.is_dir():
                        self._blobs[rel] = archive.read(info)
        except (*_READ_ERRORS, NotImplementedError, RuntimeError) as err:  # unsupported method, encrypted member
            raise DataError(f"cannot read archive {self.path}: {err}") from None
        self.files = tuple(sorted(self._blobs))


def open_source(path: str | Path) -> Source:
    """A `ZipSource` or `TarSource` for an archive, else a `DirSource` for a directory."""
    path = Path(path).expanduser()
    if path.is_dir():
        return DirSource(path)
    if path.is_file():
        if path.name.lower().endswith(".zip"):
            return ZipSource(path)
        if is_archive(path) or tarfile.is_tarfile(path):  # sniffed before zip: a tar may end with a zip member
            return TarSource(path)
        if zipfile.is_zipfile(path):
            return ZipSource(path)
    raise DataError(f"{path} is neither a directory nor a tar or zip archive")

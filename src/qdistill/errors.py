"""Errors a user can fix: a bad config, a missing file, a corrupt checkpoint, bad data, a diverged run.

The command line prints a `QdistillError` as one line naming the problem (``--debug`` shows the
traceback); any other exception is a bug and keeps its traceback. Each class also derives from the
matching built-in exception, so ``except ValueError`` in user code keeps working.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DivergedError",
    "ExportError",
    "MissingFileError",
    "QdistillError",
]


class QdistillError(Exception):
    """Base class of every error caused by the user's input rather than by a bug."""


class ConfigError(QdistillError, ValueError):
    """A config key, value or type that is not allowed (names the key and what is allowed)."""


class MissingFileError(QdistillError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class DataError(QdistillError, ValueError):
    """A dataset that is corrupt, empty, or not laid out as its format promises."""


class CheckpointError(QdistillError, ValueError):
    """A checkpoint or run folder that is missing, corrupt, unsafe or does not fit the config."""


class DivergedError(QdistillError, FloatingPointError):
    """Training produced a non-finite or exploding loss or non-finite weights."""


class ExportError(QdistillError, RuntimeError):
    """An export that cannot be written or fails its parity gate."""

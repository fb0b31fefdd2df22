"""Unlabelled text for language-model distillation: read, tokenize, pack into fixed-length blocks.

A source is a ``.txt`` / ``.txt.gz`` file (one line a unit), a ``.jsonl`` / ``.jsonl.gz`` file (one
record a unit, its text under `field`), or a folder of such files (read in sorted path order). The
held-out split is a range of those units, numbered from 1 across all files, so that e.g. the Old
Testament trains and the New Testament measures perplexity.

Example:
    >>> text = TextSplits.from_lines(["abc", "def", "gh"], lambda s: list(s.encode()), 3, test_lines=(3, 3))
    >>> text.train.tolist(), text.test.tolist()  # "abc\\ndef\\n" in blocks of 3 bytes (the tail dropped); "gh\\n"
    ([[97, 98, 99], [10, 100, 101]], [[103, 104, 10]])
    >>> next(iter(TextBlockLoader(text.train, 2)))["input_ids"].shape
    torch.Size([2, 3])
"""

from __future__ import annotations

import gzip
import json
import operator
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ConfigError, DataError, MissingFileError
from .loader import EpochLoader, Index, take
from .sources import is_hidden

__all__ = ["TEXT_LAYOUT", "TextBlockLoader", "TextSplits", "load_text", "read_text_units"]

TEXT_LAYOUT = "a .txt/.txt.gz file, a .jsonl/.jsonl.gz file with a text field, or a folder of them"
_TEXT_SUFFIXES = (".txt", ".txt.gz", ".jsonl", ".jsonl.gz")
Tokenizer = Callable[[str], object]


def _is_text_file(path: Path) -> bool:
    return path.name.lower().endswith(_TEXT_SUFFIXES)


def _read_file(path: Path, field: str) -> list[str]:
    """The lines of a text file, or the `field` of each record of a JSON-lines file."""
    try:
        raw = path.read_bytes()
        text = (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode("utf-8")
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"cannot read {path}: {err}") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text (byte {err.start})") from None
    lines = text.splitlines()
    if ".jsonl" not in path.name.lower():
        return lines
    units = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{number}: not JSON ({err.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get(field), str):
            raise DataError(f"{path}:{number}: no text field {field!r}")
        units.append(record[field])
    return units


def read_text_units(root: str | Path, field: str = "text") -> list[str]:
    """The text units (lines, or JSON records) of a file or of every text file under a folder.

    Raises:
        MissingFileError: `root` does not exist.
        DataError: no text files, or a file that is unreadable, not UTF-8, or not valid JSON lines.
    """
    path = Path(root).expanduser()
    if not path.exists():
        raise MissingFileError(f"text: {path} does not exist; expected {TEXT_LAYOUT}")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and _is_text_file(p))
        files = [p for p in files if not is_hidden(p.relative_to(path).as_posix())]
    else:
        files = [path] if _is_text_file(path) else []
    if not files:
        raise DataError(f"no text files in {path}; expected {TEXT_LAYOUT}")
    return [unit for file in files for unit in _read_file(file, field)]


def _token_ids(tokenizer: Tokenizer, text: str) -> list[int]:
    """Ids from a plain ``str -> list[int]`` callable or a Hugging Face tokenizer (``{"input_ids": ...}``)."""
    out = tokenizer(text)
    if isinstance(out, Mapping) or hasattr(out, "input_ids"):
        out = out["input_ids"]
    problem = f"the tokenizer must return non-negative integer ids, got {out!r:.60} for {text[:30]!r}"
    try:
        ids = [operator.index(i) for i in out]  # type: ignore[attr-defined]
    except TypeError:
        raise DataError(problem) from None
    if ids and min(ids) < 0:
        raise DataError(problem)
    return ids


def _pack(units: Iterable[str], tokenizer: Tokenizer, block_size: int, separator: str, split: str) -> torch.Tensor:
    """Tokenizes each unit (plus `separator`), concatenates and cuts into ``[N, block_size]``; the tail is dropped."""
    ids = [i for unit in units for i in _token_ids(tokenizer, unit + separator)]
    if len(ids) < block_size:
        raise DataError(f"the {split} text has {len(ids)} tokens, fewer than one block of {block_size}")
    n = len(ids) // block_size
    return torch.tensor(ids[: n * block_size], dtype=torch.int64).view(n, block_size)


@dataclass(frozen=True, eq=False)
class TextSplits:
    """Token blocks of a train and an optional held-out split.

    Attributes:
        train: ``int64 [N, block_size]`` token ids.
        test: ``int64 [M, block_size]``, or None without a held-out split.
        block_size: tokens per block.
    """

    train: torch.Tensor
    test: torch.Tensor | None
    block_size: int

    @classmethod
    def from_lines(
        cls,
        units: Sequence[str],
        tokenizer: Tokenizer,
        block_size: int,
        *,
        test_lines: tuple[int, int] | None = None,
        test_fraction: float = 0.0,
        separator: str = "\n",
    ) -> TextSplits:
        """Splits `units` by range (``test_lines``: first and last, 1-based, inclusive), else holds out the
        last `test_fraction` of them; tokenizes and packs each split separately, so no block spans both."""
        if block_size < 1:
            raise ConfigError(f"block_size must be >= 1, got {block_size}")
        held = _held_out(len(units), test_lines, test_fraction)
        if held is None:
            return cls(_pack(units, tokenizer, block_size, separator, "train"), None, block_size)
        first, last = held
        train = _pack([*units[: first - 1], *units[last:]], tokenizer, block_size, separator, "train")
        return cls(train, _pack(units[first - 1 : last], tokenizer, block_size, separator, "test"), block_size)


def _held_out(n: int, test_lines: tuple[int, int] | None, test_fraction: float) -> tuple[int, int] | None:
    """The held-out range ``(first, last)`` of `n` units (1-based, inclusive), or None for no test split."""
    if test_lines is not None:
        first, last = test_lines
        if not 1 <= first <= last <= n:
            raise ConfigError(f"test_lines must satisfy 1 <= first <= last <= {n} (the line count), got {test_lines}")
        return first, last
    if not 0.0 <= test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in [0, 1), got {test_fraction}")
    held = round(test_fraction * n)
    if test_fraction > 0 and held == 0:
        raise DataError(f"test_fraction {test_fraction} of {n} lines holds out nothing")
    return (n - held + 1, n) if held else None


def load_text(
    root: str | Path,
    tokenizer: Tokenizer,
    block_size: int,
    *,
    field: str = "text",
    test_lines: tuple[int, int] | None = None,
    test_fraction: float = 0.0,
    separator: str = "\n",
) -> TextSplits:
    """Reads `root` (see `read_text_units`) and packs it with `TextSplits.from_lines`.

    Args:
        root: a text or JSON-lines file (optionally gzipped), or a folder of them.
        tokenizer: ``str -> list[int]``, or a Hugging Face tokenizer (its ``input_ids`` are used).
        block_size: tokens per block.
        field: the text field of JSON-lines records.
        test_lines: the held-out units, ``(first, last)``, 1-based and inclusive, over all files.
        test_fraction: without `test_lines`, hold out this final share of the units (0: no test split).
        separator: appended to every unit before tokenizing (the line break that splitting removed).
    """
    units = read_text_units(root, field)
    return TextSplits.from_lines(
        units, tokenizer, block_size, test_lines=test_lines, test_fraction=test_fraction, separator=separator
    )


class TextBlockLoader(EpochLoader):
    """Batches ``{"input_ids": int64 [B, T]}`` of token blocks, in an order fixed by ``(seed, epoch)``.

    Same epoch semantics as `BatchLoader`: each pass advances `epoch`; `set_epoch` pins (and may resume) one.
    """

    def __init__(
        self, blocks: torch.Tensor, batch_size: int, *, shuffle: bool = False, drop_last: bool = False, seed: int = 0
    ) -> None:
        if blocks.ndim != 2 or blocks.dtype != torch.int64:
            raise TypeError(f"blocks must be an int64 [N, T] tensor, got {blocks.dtype} {tuple(blocks.shape)}")
        super().__init__(len(blocks), batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed)
        self._blocks = blocks

    def _batch(self, index: Index, epoch: int, batch: int) -> dict[str, torch.Tensor]:
        return {"input_ids": take(self._blocks, index)}

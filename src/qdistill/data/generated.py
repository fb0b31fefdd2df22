"""Training text sampled from the teacher itself (``data.format: generated``, LLM-QAT style).

Each sequence starts from a prompt (the tokenizer's BOS, or one of a configured list), then, with
``random_first_from = V``, one token drawn uniformly from ids ``[0, V)`` (LLM-QAT's random start:
without it every sequence of a chunk opens with the same greedy tokens), takes the next
``greedy_tokens`` tokens greedily (top-1) and samples the rest with ``temperature`` and ``top_k``,
up to ``block_size`` tokens. Sequences are made in chunks of ``batch_size``: chunk ``c``
starts from prompt ``c mod len(prompts)`` and samples from its own generator, seeded by
``(seed, c)``, so a chunk's tokens do not depend on which chunks were made before it. Every chunk
is written to its own ``chunk_NNNNN.npy`` (temporary file, then rename) as soon as it is done, so
an interrupted generation restarts at the first missing chunk and ends with the same tokens as an
uninterrupted one. ``settings.json`` records what the folder was made with (settings and a
fingerprint of the teacher's weights); a folder made with anything else is emptied and redone.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..batch import logits_of
from ..errors import ConfigError, DataError

__all__ = ["GenerationSettings", "generate_blocks", "start_prompts", "teacher_fingerprint"]

SETTINGS = "settings.json"


@dataclass(frozen=True)
class GenerationSettings:
    """What a generated token set depends on (besides the teacher).

    Attributes:
        num_sequences: sequences to make.
        block_size: tokens per sequence, prompt included.
        prompts: token ids each sequence starts from (at least one, each 1..block_size-1 long).
        seed: seeds every chunk's generator together with the chunk's index.
        random_first_from: > 0: the first token after the prompt is uniform over ids [0, this)
            (the tokenizer's vocabulary); 0: none, the greedy tokens follow the prompt.
        greedy_tokens: tokens after the prompt (and the random token) taken greedily before sampling.
        temperature: softmax temperature of the sampled tokens.
        top_k: sample among the k most likely tokens only (None: the whole vocabulary).
        batch_size: sequences per forward pass and per chunk file.
    """

    num_sequences: int
    block_size: int
    prompts: tuple[tuple[int, ...], ...]
    seed: int = 0
    random_first_from: int = 0
    greedy_tokens: int = 3
    temperature: float = 1.0
    top_k: int | None = None
    batch_size: int = 8

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompts", tuple(tuple(int(i) for i in p) for p in self.prompts))
        if not self.prompts or not all(1 <= len(p) < self.block_size for p in self.prompts):
            raise ConfigError(f"generation needs prompts of 1 to {self.block_size - 1} tokens (block_size - 1)")
        if self.num_sequences < 1 or self.batch_size < 1 or self.greedy_tokens < 0 or self.random_first_from < 0:
            raise ConfigError(
                "data.num_sequences and data.gen_batch_size must be >= 1, data.gen_greedy_tokens and "
                "random_first_from >= 0"
            )
        if self.temperature <= 0 or (self.top_k is not None and self.top_k < 1):
            raise ConfigError("data.gen_temperature must be > 0 and data.gen_top_k >= 1 (or null)")

    @property
    def chunks(self) -> int:
        return -(-self.num_sequences // self.batch_size)


def start_prompts(tokenizer: Any, texts: Sequence[str] | None) -> tuple[tuple[int, ...], ...]:
    """The start token ids: the tokenizer's BOS (its EOS when it has no BOS, as GPT-2 does) without
    `texts`, else each text tokenized with the tokenizer's special tokens (a BOS where it adds one)."""
    if texts:
        prompts = tuple(tuple(tokenizer(t)["input_ids"]) for t in texts)
        if not all(prompts):
            raise ConfigError("data.gen_prompts: a prompt tokenizes to no tokens")
        return prompts
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if start is None:
        raise ConfigError("the tokenizer has no BOS or EOS token to start generation: set data.gen_prompts")
    return ((int(start),),)


@torch.no_grad()
def teacher_fingerprint(model: nn.Module) -> str:
    """A cheap identity of a model's weights (names, shapes and sums): enough to notice another teacher."""
    h = hashlib.sha256()
    for name, p in model.state_dict().items():
        h.update(f"{name}{tuple(p.shape)}{float(p.double().sum()):.12e}".encode())
    return h.hexdigest()[:16]


def _cache_of(output: Any) -> tuple[str, Any]:
    """The key/value cache of a model output and the argument name that takes it back: ``cache`` in
    transformers 5, ``past_key_values`` before."""
    for name in ("cache", "past_key_values"):
        cache = getattr(output, name, None)
        if cache is not None:
            return name, cache
    raise ConfigError(f"{type(output).__name__} returns no key/value cache: data.format: generated needs a causal LM")


def _next_token(logits: Tensor, greedy: bool, s: GenerationSettings, gen: torch.Generator) -> Tensor:
    """Top-1, or a sample of ``softmax(logits / T)`` restricted to the top k; drawn on the CPU so that a
    seed means the same draws on every device."""
    logits = logits.float().cpu()
    if greedy:
        return logits.argmax(-1)
    if s.top_k is not None and s.top_k < logits.shape[-1]:
        kth = logits.topk(s.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -torch.inf)
    return torch.multinomial(torch.softmax(logits / s.temperature, dim=-1), 1, generator=gen)[:, 0]


@torch.no_grad()
def _generate_chunk(teacher: nn.Module, s: GenerationSettings, chunk: int, device: torch.device) -> np.ndarray:
    """The ``int32 [n, block_size]`` sequences of one chunk (see the module docstring)."""
    n = min(s.batch_size, s.num_sequences - chunk * s.batch_size)
    prompt = s.prompts[chunk % len(s.prompts)]
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([s.seed, chunk]).generate_state(1)[0]))
    ids = torch.tensor(prompt, dtype=torch.int64).repeat(n, 1)
    if s.random_first_from:
        ids = torch.cat([ids, torch.randint(s.random_first_from, (n, 1), generator=gen)], dim=1)
    step_input, past, start = ids, {}, ids.shape[1]
    while ids.shape[1] < s.block_size:
        out = teacher(input_ids=step_input.to(device), use_cache=True, **past)
        name, cache = _cache_of(out)
        past = {name: cache}
        greedy = ids.shape[1] - start < s.greedy_tokens
        step_input = _next_token(logits_of(out)[:, -1], greedy, s, gen)[:, None]
        ids = torch.cat([ids, step_input], dim=1)
    return ids.numpy().astype(np.int32)


def _chunk_file(folder: Path, chunk: int) -> Path:
    return folder / f"chunk_{chunk:05d}.npy"


def _write_atomic(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _prepare(folder: Path, record: dict[str, Any]) -> None:
    """Make `folder` hold chunks of `record` only: another record's chunks (and stale temporaries) go."""
    folder.mkdir(parents=True, exist_ok=True)
    for tmp in folder.glob(".*.tmp"):
        tmp.unlink()
    file, text = folder / SETTINGS, json.dumps(record, indent=1)
    if file.is_file() and json.loads(file.read_text()) == json.loads(text):  # as JSON: tuples read back as lists
        return
    for old in folder.glob("chunk_*.npy"):
        old.unlink()
    _write_atomic(file, lambda f: f.write(text.encode()))


def _read_chunk(path: Path, rows: int, s: GenerationSettings) -> np.ndarray:
    try:
        tokens = np.load(path)
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read generated tokens {path}: {err}; delete it to generate it again") from None
    if tokens.shape != (rows, s.block_size):
        raise DataError(f"{path} holds {tokens.shape} tokens, expected {(rows, s.block_size)}: delete it")
    return tokens


def generate_blocks(
    teacher: nn.Module, s: GenerationSettings, folder: str | Path, device: str | torch.device = "cpu"
) -> Tensor:
    """``int64 [num_sequences, block_size]`` sequences sampled from `teacher` (a causal LM taking
    ``input_ids`` and ``use_cache``), made or completed in `folder` and read back from it."""
    folder, device = Path(folder), torch.device(device)
    _prepare(folder, {**asdict(s), "teacher": teacher_fingerprint(teacher)})
    was, home = teacher.training, next(teacher.parameters()).device
    teacher.eval().to(device)
    try:
        for chunk in range(s.chunks):
            path = _chunk_file(folder, chunk)
            if not path.is_file():
                tokens = _generate_chunk(teacher, s, chunk, device)
                _write_atomic(path, lambda f, t=tokens: np.save(f, t))
    finally:
        teacher.train(was).to(home)  # where the caller had it (the student is copied from it next)
    rows = [min(s.batch_size, s.num_sequences - c * s.batch_size) for c in range(s.chunks)]
    tokens = np.concatenate([_read_chunk(_chunk_file(folder, c), r, s) for c, r in enumerate(rows)])
    return torch.from_numpy(tokens.astype(np.int64))

"""Unlabelled text: reading, byte-level tokenizing, packing into blocks, splitting by line range, loading."""

import doctest
import gzip
import json
from pathlib import Path

import pytest
import torch

from qdistill.data import text as text_module
from qdistill.data.text import TextBlockLoader, TextSplits, load_text, read_text_units
from qdistill.errors import ConfigError, DataError, MissingFileError

SAMPLE = Path(__file__).parent / "text" / "sample.txt"  # 23 lines, 1,684 bytes
KJV = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "text" / "kjv.txt.gz"


def byte_tokens(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def text_of(block: torch.Tensor) -> str:
    return bytes(block.tolist()).decode("utf-8")


def test_units_split_by_line_range_and_packed_by_hand():
    split = TextSplits.from_lines(["ab", "cd", "ef", "gh"], byte_tokens, 3, test_lines=(2, 3))
    assert split.train.tolist() == [[97, 98, 10], [103, 104, 10]]  # "ab\ngh\n"
    assert split.test.tolist() == [[99, 100, 10], [101, 102, 10]]  # "cd\nef\n"
    joined = TextSplits.from_lines(["ab", "cd", "e"], byte_tokens, 4, separator="")
    assert joined.train.tolist() == [[97, 98, 99, 100]]  # no separator; the short tail "e" is dropped


def test_fraction_holds_out_the_last_lines():
    split = TextSplits.from_lines(["abc", "def", "ghi", "jkl"], byte_tokens, 4, test_fraction=0.25)
    assert [text_of(b) for b in split.train] == ["abc\n", "def\n", "ghi\n"]
    assert [text_of(b) for b in split.test] == ["jkl\n"]
    assert TextSplits.from_lines(["abcd"], byte_tokens, 2).test is None  # no held-out split by default


def test_sample_file_blocks_are_the_file_bytes():
    raw = SAMPLE.read_bytes()
    lines = raw.split(b"\n")
    test_start = sum(len(line) + 1 for line in lines[:20])  # byte offset of line 21
    split = load_text(SAMPLE, byte_tokens, 64, test_lines=(21, 23))
    assert split.train.shape == (test_start // 64, 64) and split.train.dtype == torch.int64
    assert bytes(split.train.flatten().tolist()) == raw[: split.train.numel()]
    assert split.test.shape == ((len(raw) - test_start) // 64, 64)
    assert bytes(split.test[0].tolist()) == raw[test_start : test_start + 64]
    assert text_of(split.test[0]).startswith("Before he slept")


def test_gzip_folder_and_jsonl_read_the_same_units(tmp_path):
    units = SAMPLE.read_text().splitlines()
    gz = tmp_path / "sample.txt.gz"
    gz.write_bytes(gzip.compress(SAMPLE.read_bytes()))
    folder = tmp_path / "folder"
    (folder / "b").mkdir(parents=True)
    (folder / "a.txt").write_text("\n".join(units[:10]) + "\n")
    (folder / "b" / "c.txt.gz").write_bytes(gzip.compress(("\n".join(units[10:]) + "\n").encode()))
    (folder / ".hidden.txt").write_text("never read\n")
    (folder / "notes.md").write_text("not a text source\n")
    jsonl = tmp_path / "sample.jsonl"
    records = [json.dumps({"id": i, "body": u}) for i, u in enumerate(units)]
    jsonl.write_text("\n".join(records[:5]) + "\n\n" + "\n".join(records[5:]) + "\n")  # a blank line is skipped
    assert len(units) == 23
    for source in (gz, folder):
        assert read_text_units(source) == units
    assert read_text_units(jsonl, field="body") == units


def test_bad_text_sources_are_named(tmp_path):
    with pytest.raises(MissingFileError, match="nowhere does not exist"):
        read_text_units(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no text files in .*empty"):
        read_text_units(tmp_path / "empty")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match="latin.txt is not UTF-8 text \\(byte 3\\)"):
        read_text_units(latin)
    broken = tmp_path / "broken.txt.gz"
    broken.write_bytes(gzip.compress(b"hello\n" * 100)[:-12])
    with pytest.raises(DataError, match="cannot read .*broken.txt.gz"):
        read_text_units(broken)
    records = tmp_path / "r.jsonl"
    records.write_text('{"text": "ok"}\n{"title": "no text"}\n')
    with pytest.raises(DataError, match="r.jsonl:2: no text field 'text'"):
        read_text_units(records)
    records.write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(DataError, match="r.jsonl:2: not JSON"):
        read_text_units(records)


def test_bad_split_and_tokenizer_arguments():
    units = ["abcd", "efgh"]
    with pytest.raises(ConfigError, match="test_lines must satisfy 1 <= first <= last <= 2"):
        TextSplits.from_lines(units, byte_tokens, 2, test_lines=(2, 3))
    with pytest.raises(ConfigError, match="block_size must be >= 1"):
        TextSplits.from_lines(units, byte_tokens, 0)
    with pytest.raises(DataError, match="the test text has 3 tokens, fewer than one block of 8"):
        TextSplits.from_lines(["abcdefgh", "ab"], byte_tokens, 8, test_lines=(2, 2))
    with pytest.raises(DataError, match="non-negative integer ids"):
        TextSplits.from_lines(units, lambda s: s.split(), 2)


class MappingTokenizer:
    """Answers like a Hugging Face tokenizer: a mapping with input_ids (and an attention mask)."""

    def __call__(self, text):
        ids = byte_tokens(text)
        return {"input_ids": ids, "attention_mask": [1] * len(ids)}


def test_hugging_face_style_tokenizers():
    units = ["ab", "cd"]
    expected = TextSplits.from_lines(units, byte_tokens, 3).train
    assert torch.equal(TextSplits.from_lines(units, MappingTokenizer(), 3).train, expected)
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    model = tokenizers.models.WordLevel({"[UNK]": 0, "a": 1, "b": 2}, unk_token="[UNK]")
    core = tokenizers.Tokenizer(model)
    core.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=core)
    split = TextSplits.from_lines(["a b", "b a c"], hf, 2)  # "c" is unknown: id 0; the separator is whitespace
    assert split.train.tolist() == [[1, 2], [2, 1]]  # the tail [0] is dropped


def test_loader_yields_dict_batches_in_a_seeded_resumable_order():
    blocks = torch.arange(7 * 3).view(7, 3)
    plain = list(TextBlockLoader(blocks, 3))
    assert [tuple(b["input_ids"].shape) for b in plain] == [(3, 3), (3, 3), (1, 3)]
    assert torch.equal(torch.cat([b["input_ids"] for b in plain]), blocks)
    assert len(TextBlockLoader(blocks, 3, drop_last=True)) == 2

    def order(loader, epoch, start=0):
        loader.set_epoch(epoch, start)
        return [int(row[0]) // 3 for b in loader for row in b["input_ids"]]

    a, b = TextBlockLoader(blocks, 2, shuffle=True, seed=5), TextBlockLoader(blocks, 2, shuffle=True, seed=5)
    order(b, 9)  # a different history: only (seed, epoch) may decide the order
    first = order(a, 1)
    assert sorted(first) == list(range(7)) and first == order(b, 1)
    assert order(a, 2) != first
    assert order(a, 1, start=2) == first[4:]  # resuming at batch 2 replays the rest of the epoch
    with pytest.raises(TypeError, match="int64"):
        TextBlockLoader(blocks.float(), 2)


@pytest.mark.slow
@pytest.mark.skipif(not KJV.is_file(), reason=f"{KJV} not found (../shared beside the checkout)")
def test_kjv_old_testament_trains_new_testament_tests():
    units = read_text_units(KJV)
    assert len(units) == 31102 and units[0].startswith("Ge1:1 In the beginning God created")
    assert units[23145].startswith("Mat1:1 ")  # line 23,146
    split = TextSplits.from_lines(units, byte_tokens, 256, test_lines=(23146, 31102))
    assert text_of(split.train[0]).startswith("Ge1:1 In the beginning") and text_of(split.test[0]).startswith("Mat1:1")


def test_docstring_example():
    result = doctest.testmod(text_module)
    assert result.failed == 0 and result.attempted > 0

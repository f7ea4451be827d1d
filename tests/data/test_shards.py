"""Shard directories whose splits span several token files (one per pipeline task) read as one flat split; the
single-file layout still loads."""

import json

import numpy as np
import pytest

from codelm.data.shards import ShardSet, assemble_shards, write_shards, write_token_file
from codelm.errors import DataError


def _docs(seed, n):
    rng = np.random.default_rng(seed)
    return [list(rng.integers(0, 1000, size=rng.integers(1, 30))) for _ in range(n)]


@pytest.fixture
def parts(tmp_path, tokenizer):
    work = tmp_path / "work"
    work.mkdir()
    docs = [_docs(1, 7), _docs(2, 0), _docs(3, 5)]  # an empty task too
    entries = [(work, write_token_file(work, f"train-{i:05d}", d, np.dtype(np.uint16), tokenizer.eot_id, 10 * i))
               for i, d in enumerate(docs)]
    out = assemble_shards(tmp_path / "out", {"train": entries, "val": entries[:1]}, tokenizer, {"m": 1})
    return out, [t for d in docs for t in d]


def test_a_split_over_several_files_reads_as_one(parts, tokenizer):
    out, docs = parts
    split = ShardSet(out).split("train")
    assert len(split.doc_offsets) == len(docs) + 1 and split.n_tokens == split.doc_offsets[-1]
    for d, a, b in zip(docs, split.doc_offsets[:-1], split.doc_offsets[1:]):
        assert list(split.tokens[a:b]) == d + [tokenizer.eot_id]
    whole = np.asarray(split.tokens)
    for a, b in [(0, 5), (3, len(whole)), (len(whole) - 9, len(whole) - 1)]:  # windows across file boundaries
        assert (split.tokens[a:b] == whole[a:b]).all()
    assert split.tokens[-1] == whole[-1] and split.n_bytes == 30
    assert json.loads((out / "index.json").read_text())["splits"]["train"]["n_docs"] == len(docs)


def test_the_trainer_samples_windows_across_files(parts):
    from codelm.train import sample_windows
    out, _ = parts
    tokens = ShardSet(out).split("train").tokens
    windows, starts = sample_windows(tokens, 8, 16, 0, 0, 0, 0, 1, 1)
    whole = np.asarray(tokens)
    assert all((w == whole[s:s + 16]).all() for w, s in zip(windows, starts))


def test_single_file_directories_still_load(tmp_path, tokenizer):
    out = write_shards(tmp_path / "old", {"train": _docs(4, 3), "val": _docs(5, 1)}, {"train": 5, "val": 1},
                       tokenizer, {"m": 1})
    split = ShardSet(out).split("train")
    assert isinstance(split.tokens, np.memmap) and len(split.doc_offsets) == 4


def test_a_truncated_task_file_is_named(parts):
    out, _ = parts
    (out / "train-00002.bin").write_bytes((out / "train-00002.bin").read_bytes()[:-2])
    with pytest.raises(DataError, match="train-00002.bin"):
        ShardSet(out).split("train")

"""The shard format, pinned by the walking skeleton (later stages extend the index, never replace it).

    DIR/
      index.json        {"format": "codelm-shards/1", "tokenizer": {name, hash, ...}, "dtype": "uint16"|"uint32",
                         "eot_id", "splits": {name: {file, docs_file, n_tokens, n_docs, n_bytes}},
                         "manifest": {...}, "manifest_hash"}
      train.bin         flat token array (every document followed by <|endoftext|>)
      train.docs.npy    int64 [n_docs + 1] start offsets of each document in train.bin (last = n_tokens)
      val.bin, val.docs.npy
      manifest.json     the data pipeline's stage-by-stage record (same content as index["manifest"])
      timings.json      (optional) seconds and MB/s per stage; not hashed, differs between runs

uint16 when every id fits (vocabularies up to 65,536), else uint32. `n_bytes` is the UTF-8 size of the split's text,
which turns nats/token into bits/byte, a vocabulary-independent loss.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from codelm.atomic import replace_directory
from codelm.errors import DataError

FORMAT = "codelm-shards/1"
INDEX = "index.json"


def token_dtype(n_vocab: int) -> np.dtype:
    return np.dtype(np.uint16) if n_vocab <= 65536 else np.dtype(np.uint32)


def manifest_hash(manifest: dict) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True, default=str).encode()).hexdigest()


def remove_stale_temp_dirs(out_dir: Path) -> list[Path]:
    """Temp/old directories left by an interrupted `write_shards` for `out_dir` whose process is gone."""
    removed = []
    for p in out_dir.parent.glob(f".*-{out_dir.name}-*"):
        kind, _, rest = p.name[1:].partition(f"-{out_dir.name}-")
        pid = rest.split("-")[0]
        if kind not in ("tmp", "old") or not pid.isdigit() or _alive(int(pid)):
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_shards(out_dir: str | os.PathLike, splits: dict[str, list[list[int]] | list[np.ndarray]],
                 split_bytes: dict[str, int], tokenizer, manifest: dict, timings: dict | None = None) -> Path:
    """Write all splits into a fresh temp dir, then swap it in for `out_dir` (a re-run never leaves a mix, and
    cleans what an interrupted run left behind). `timings` (optional) go to timings.json, outside the manifest and
    the index, so that re-running on the same inputs rewrites index.json and manifest.json byte for byte."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_dirs(out_dir)
    tmp = out_dir.parent / f".tmp-{out_dir.name}-{os.getpid()}-{time.monotonic_ns()}"
    tmp.mkdir()
    dtype = token_dtype(tokenizer.n_vocab)
    index = {"format": FORMAT, "tokenizer": tokenizer.describe(), "dtype": dtype.name, "eot_id": tokenizer.eot_id,
             "splits": {}, "manifest": manifest, "manifest_hash": manifest_hash(manifest)}
    try:
        for name, docs in splits.items():
            lengths = np.array([len(d) + 1 for d in docs], dtype=np.int64)  # +1: the end-of-text after each doc
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            tokens = np.empty(int(offsets[-1]), dtype=dtype)
            for d, start in zip(docs, offsets[:-1]):
                tokens[start:start + len(d)] = d
                tokens[start + len(d)] = tokenizer.eot_id
            tokens.tofile(tmp / f"{name}.bin")
            np.save(tmp / f"{name}.docs.npy", offsets)
            index["splits"][name] = {"file": f"{name}.bin", "docs_file": f"{name}.docs.npy",
                                     "n_tokens": int(offsets[-1]), "n_docs": len(docs),
                                     "n_bytes": int(split_bytes.get(name, 0))}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
        if timings is not None:
            (tmp / "timings.json").write_text(json.dumps(timings, indent=2, sort_keys=True) + "\n")
        (tmp / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True, default=str) + "\n")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        replace_directory(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


@dataclass
class Split:
    """One split, memory-mapped: `tokens` (flat) and `doc_offsets` (start of each document, then the end)."""
    name: str
    tokens: np.ndarray
    doc_offsets: np.ndarray
    n_bytes: int

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    @property
    def bytes_per_token(self) -> float:
        return self.n_bytes / max(1, self.n_tokens)


class ShardSet:
    """Reads a shard directory written by `write_shards`, checking it as it goes."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        index_path = self.path / INDEX
        if not index_path.is_file():
            raise DataError(f"{index_path}: missing — is {self.path} a directory made by `codelm data prepare`?")
        try:
            self.index = json.loads(index_path.read_text())
        except json.JSONDecodeError as e:
            raise DataError(f"{index_path}: corrupt JSON ({e})") from None
        if self.index.get("format") != FORMAT:
            raise DataError(f"{index_path}: unknown shard format {self.index.get('format')!r} (expected {FORMAT!r})")
        self.dtype = np.dtype(self.index["dtype"])
        self._splits: dict[str, Split] = {}

    @property
    def tokenizer_desc(self) -> dict:
        return self.index["tokenizer"]

    @property
    def manifest_hash(self) -> str:
        return self.index.get("manifest_hash", "")

    @property
    def split_names(self) -> list[str]:
        return list(self.index["splits"])

    def split(self, name: str) -> Split:
        if name not in self._splits:
            meta = self.index["splits"].get(name)
            if meta is None:
                raise DataError(f"{self.path}: no split {name!r} (has {', '.join(self.split_names)})")
            file = self.path / meta["file"]
            if not file.is_file():
                raise DataError(f"{file}: missing")
            expected = meta["n_tokens"] * self.dtype.itemsize
            if file.stat().st_size != expected:
                raise DataError(f"{file}: {file.stat().st_size} bytes, index.json says {expected} (truncated?)")
            tokens = np.memmap(file, dtype=self.dtype, mode="r") if expected else np.zeros(0, dtype=self.dtype)
            offsets = np.load(self.path / meta["docs_file"])
            self._splits[name] = Split(name, tokens, offsets, meta.get("n_bytes", 0))
        return self._splits[name]

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

A split may instead span several token files, one per pipeline task (`train-00003.bin` + `train-00003.docs.npy`,
offsets local to the file), listed in order: `"splits": {name: {"files": [{file, docs_file, n_tokens, n_docs,
n_bytes}, ...], n_tokens, n_docs, n_bytes}}`. Readers memory-map every file and present one flat split; a directory
with the single-file layout above still loads.

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


def _finish(tmp: Path, out_dir: Path, index: dict, manifest: dict, timings: dict | None) -> None:
    """The manifest, timings and index beside the token files, everything fsync'd, then swapped in for out_dir."""
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
    if timings is not None:
        (tmp / "timings.json").write_text(json.dumps(timings, indent=2, sort_keys=True) + "\n")
    (tmp / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True, default=str) + "\n")
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    replace_directory(tmp, out_dir)


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
            tokens, offsets = encode_documents(docs, dtype, tokenizer.eot_id)
            tokens.tofile(tmp / f"{name}.bin")
            np.save(tmp / f"{name}.docs.npy", offsets)
            index["splits"][name] = {"file": f"{name}.bin", "docs_file": f"{name}.docs.npy",
                                     "n_tokens": int(offsets[-1]), "n_docs": len(docs),
                                     "n_bytes": int(split_bytes.get(name, 0))}
        _finish(tmp, out_dir, index, manifest, timings)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def encode_documents(docs: list, dtype: np.dtype, eot_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(flat tokens, offsets): every document followed by end-of-text; offsets start at 0 and end at n_tokens."""
    lengths = np.array([len(d) + 1 for d in docs], dtype=np.int64)  # +1: the end-of-text after each doc
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    tokens = np.empty(int(offsets[-1]), dtype=dtype)
    for d, start in zip(docs, offsets[:-1]):
        tokens[start:start + len(d)] = d
        tokens[start + len(d)] = eot_id
    return tokens, offsets


def write_token_file(directory: Path, stem: str, docs: list, dtype: np.dtype, eot_id: int, n_bytes: int) -> dict:
    """`stem.bin` + `stem.docs.npy`, each written to a temp name and renamed (a killed task leaves no half file
    under the final name); returns the file's entry for index.json."""
    tokens, offsets = encode_documents(docs, dtype, eot_id)
    for name, write in ((f"{stem}.bin", tokens.tofile), (f"{stem}.docs.npy", lambda f: np.save(f, offsets))):
        tmp = directory / f".{name}.tmp-{os.getpid()}"
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(directory / name)
    return {"file": f"{stem}.bin", "docs_file": f"{stem}.docs.npy", "n_tokens": int(offsets[-1]),
            "n_docs": len(docs), "n_bytes": int(n_bytes)}


def assemble_shards(out_dir: str | os.PathLike, files: dict[str, list[tuple[Path, dict]]], tokenizer,
                    manifest: dict, timings: dict | None = None) -> Path:
    """Move per-task token files (`files[split]` = [(directory, entry from write_token_file)], in order) into a
    fresh directory with index.json, then swap it in for `out_dir`, as `write_shards` does."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_dirs(out_dir)
    tmp = out_dir.parent / f".tmp-{out_dir.name}-{os.getpid()}-{time.monotonic_ns()}"
    tmp.mkdir()
    index = {"format": FORMAT, "tokenizer": tokenizer.describe(), "dtype": token_dtype(tokenizer.n_vocab).name,
             "eot_id": tokenizer.eot_id, "splits": {}, "manifest": manifest, "manifest_hash": manifest_hash(manifest)}
    try:
        for name, entries in files.items():
            for directory, entry in entries:
                for key in ("file", "docs_file"):  # the work dir stays valid to resume
                    _link_or_copy(directory / entry[key], tmp / entry[key])
            index["splits"][name] = {"files": [e for _, e in entries],
                                     **{k: sum(e[k] for _, e in entries) for k in ("n_tokens", "n_docs", "n_bytes")}}
        _finish(tmp, out_dir, index, manifest, timings)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link where the two are on one filesystem (no second copy of the corpus' tokens to write, in the
    serial end of a run; a finished token file is never written again), else a copy."""
    dst.unlink(missing_ok=True)  # a file listed twice
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


class ConcatTokens:
    """Several memory-mapped token files seen as one flat array: len(), integer and slice indexing (a slice across
    a file boundary is stitched), np.asarray(). What the trainer's window sampling needs, without copying."""

    def __init__(self, parts: list[np.ndarray], dtype: np.dtype):
        self.parts, self.dtype = parts, dtype
        self.starts = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    @property
    def size(self) -> int:
        return len(self)

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                return np.asarray(self[start:stop])[::step]
            if stop <= start:
                return np.zeros(0, dtype=self.dtype)
            first = int(np.searchsorted(self.starts, start, "right")) - 1
            out, pos = [], start
            for i in range(first, len(self.parts)):
                if pos >= stop:
                    break
                lo = pos - self.starts[i]
                hi = min(stop, self.starts[i + 1]) - self.starts[i]
                out.append(self.parts[i][lo:hi])
                pos = self.starts[i] + hi
            return out[0] if len(out) == 1 else np.concatenate(out)
        index = int(key) + (len(self) if int(key) < 0 else 0)
        if not 0 <= index < len(self):
            raise IndexError(key)
        i = int(np.searchsorted(self.starts, index, "right")) - 1
        return self.parts[i][index - self.starts[i]]

    def __array__(self, dtype=None, copy=None):
        whole = np.concatenate(self.parts) if self.parts else np.zeros(0, dtype=self.dtype)
        return whole.astype(dtype) if dtype is not None else whole


@dataclass
class Split:
    """One split, memory-mapped: `tokens` (flat) and `doc_offsets` (start of each document, then the end)."""
    name: str
    tokens: np.ndarray | ConcatTokens
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
            entries = meta["files"] if "files" in meta else [meta]
            parts, offsets = [], [np.zeros(1, dtype=np.int64)]
            for entry in entries:
                tokens, local = self._load_file(entry)
                offsets.append(local[1:] + sum(len(p) for p in parts))
                parts.append(tokens)
            tokens = parts[0] if len(parts) == 1 else ConcatTokens(parts, self.dtype)
            self._splits[name] = Split(name, tokens, np.concatenate(offsets), meta.get("n_bytes", 0))
        return self._splits[name]

    def _load_file(self, entry: dict) -> tuple[np.ndarray, np.ndarray]:
        file = self.path / entry["file"]
        if not file.is_file():
            raise DataError(f"{file}: missing")
        expected = entry["n_tokens"] * self.dtype.itemsize
        if file.stat().st_size != expected:
            raise DataError(f"{file}: {file.stat().st_size} bytes, index.json says {expected} (truncated?)")
        tokens = np.memmap(file, dtype=self.dtype, mode="r") if expected else np.zeros(0, dtype=self.dtype)
        offsets = np.load(self.path / entry["docs_file"])
        if len(offsets) != entry["n_docs"] + 1 or (len(offsets) and offsets[-1] != entry["n_tokens"]):
            raise DataError(f"{self.path / entry['docs_file']}: {len(offsets) - 1} documents ending at "
                            f"{offsets[-1] if len(offsets) else '?'}, index.json says {entry['n_docs']} ending at "
                            f"{entry['n_tokens']}")
        return tokens, offsets

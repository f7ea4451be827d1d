"""`codelm data prepare`: sources -> stages -> tokenized, packed shards with a manifest.

Each stage is a small object with a name and `keep(doc) -> reason | None`; the pipeline records, per stage, how many
documents and bytes went in and came out and why each removal happened. The validation split is chosen by a hash of
the document's content, so it is stable across runs and, after exact dedup, never shares a document with train.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from codelm.config import option
from codelm.data.shards import write_shards
from codelm.data.sources import Document, stdlib_documents
from codelm.errors import DataError

log = logging.getLogger("codelm.data")


@dataclass
class DataConfig:
    out: str = option("data/stdlib", "output shard directory")
    source: str = option("stdlib", "'stdlib' (the interpreter's standard library), a directory of code, or a "
                                   "JSONL/Parquet file")
    tokenizer: str = option("cl100k_base:16384", "tokenizer: cl100k_base or cl100k_base:N (ranks below N)")
    val_fraction: float = option(0.02, "share of documents held out for validation")
    min_bytes: int = option(1, "drop documents smaller than this")
    max_bytes: int = option(1_000_000, "drop documents larger than this")
    exact_dedup: bool = option(True, "drop exact duplicates (hash of whitespace-normalized content)")
    num_threads: int = option(2, "tokenizer threads")


@dataclass
class StageStats:
    name: str
    docs_in: int = 0
    docs_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0

    def __post_init__(self):
        self.removed: Counter = Counter()
        self.examples: dict[str, list[str]] = {}

    def to_dict(self) -> dict:
        return {"name": self.name, "docs_in": self.docs_in, "docs_out": self.docs_out, "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out, "removed": dict(self.removed), "examples": self.examples,
                "seconds": round(self.seconds, 3)}


class SizeFilter:
    name = "size"

    def __init__(self, min_bytes: int, max_bytes: int):
        self.min_bytes, self.max_bytes = min_bytes, max_bytes

    def keep(self, doc: Document) -> str | None:
        n = len(doc.text.encode("utf-8"))
        if n < self.min_bytes:
            return "too small"
        if n > self.max_bytes:
            return "too large"
        return None


class ExactDedup:
    """Drops a document whose whitespace-normalized content was already seen (first occurrence wins)."""
    name = "exact_dedup"

    def __init__(self):
        self.seen: set[bytes] = set()

    def keep(self, doc: Document) -> str | None:
        key = hashlib.sha1(" ".join(doc.text.split()).encode("utf-8")).digest()
        if key in self.seen:
            return "duplicate"
        self.seen.add(key)
        return None


def run_stage(stage, docs: Iterable[Document], stats: StageStats) -> Iterator[Document]:
    for doc in docs:
        t0 = time.perf_counter()
        size = len(doc.text.encode("utf-8"))
        stats.docs_in += 1
        stats.bytes_in += size
        reason = stage.keep(doc)
        stats.seconds += time.perf_counter() - t0
        if reason is None:
            stats.docs_out += 1
            stats.bytes_out += size
            yield doc
        else:
            stats.removed[reason] += 1
            examples = stats.examples.setdefault(reason, [])
            if len(examples) < 5:
                examples.append(doc.id)


def load_documents(cfg: DataConfig, rejects: list) -> Iterator[Document]:
    if cfg.source == "stdlib":
        return stdlib_documents(rejects)
    from codelm.data import sources
    loader = getattr(sources, "documents_from", None)
    if loader is None:
        raise DataError(f"source {cfg.source!r}: only 'stdlib' is supported by this version")
    return loader(cfg.source, rejects)


def build_stages(cfg: DataConfig) -> list:
    stages = [SizeFilter(cfg.min_bytes, cfg.max_bytes)]
    if cfg.exact_dedup:
        stages.append(ExactDedup())
    return stages


def is_validation(doc: Document, fraction: float) -> bool:
    h = int.from_bytes(hashlib.sha256(doc.text.encode("utf-8")).digest()[:8], "little")
    return (h % 1_000_000) < fraction * 1_000_000


def prepare(cfg: DataConfig) -> dict:
    """Run the pipeline and write shards; returns the index written."""
    from codelm.tokenizer import get_tokenizer

    tokenizer = get_tokenizer(cfg.tokenizer)
    t_start = time.perf_counter()
    rejects: list[tuple[str, str]] = []
    docs: Iterable[Document] = load_documents(cfg, rejects)
    stages = build_stages(cfg)
    stats = [StageStats(s.name) for s in stages]
    for stage, st in zip(stages, stats):
        docs = run_stage(stage, docs, st)
    kept = list(docs)
    if not kept:
        raise DataError(f"source {cfg.source!r}: no usable documents remain after filtering "
                        f"({len(rejects)} unreadable)")

    split_docs = {"train": [], "val": []}
    for doc in kept:
        split_docs["val" if is_validation(doc, cfg.val_fraction) else "train"].append(doc)
    if not split_docs["val"] and len(kept) > 1:  # tiny corpora: still hold one document out
        split_docs["val"].append(split_docs["train"].pop())
    if not split_docs["train"]:
        raise DataError(f"source {cfg.source!r}: too few documents to make a training split")

    t_tok = time.perf_counter()
    tokens, n_bytes = {}, {}
    for name, ds in split_docs.items():
        tokens[name] = tokenizer.encode_batch([d.text for d in ds], num_threads=cfg.num_threads)
        n_bytes[name] = sum(len(d.text.encode("utf-8")) for d in ds)
    tok_seconds = time.perf_counter() - t_tok
    manifest = {
        "source": cfg.source,
        "config": {k: v for k, v in vars(cfg).items() if k != "out"},
        "unreadable": {"count": len(rejects), "examples": rejects[:10]},
        "stages": [s.to_dict() for s in stats],
        "tokenization": {"seconds": round(tok_seconds, 3), "tokens": {k: sum(map(len, v)) for k, v in tokens.items()},
                         "bytes": n_bytes},
        "documents": {k: len(v) for k, v in split_docs.items()},
        "val_ids": [d.id for d in split_docs["val"]][:1000],
    }
    out = write_shards(cfg.out, tokens, n_bytes, tokenizer, manifest)
    log.info("wrote %s in %.1fs", out, time.perf_counter() - t_start)
    import json
    return json.loads((Path(out) / "index.json").read_text())

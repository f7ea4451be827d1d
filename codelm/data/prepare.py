"""`codelm data prepare`: sources -> stages -> tokenized, packed shards with a manifest.

    sources ─► size ─► quality (Gopher-style, filters.py) ─► edu score (phi-1-style, educational.py)
            ─► exact dedup ─► near dedup (MinHash LSH, dedup.py) ─► decontaminate (decontaminate.py)
            ─► validation split ─► tokenize ─► shards (shards.py)

Each stage is optional and has a name and `keep(doc) -> reason | None`; a stage whose work is per-document and pure
also offers `analyze(doc)` (run in a process pool, both cores) and `decide(doc, result)` (run in order, in this
process, where the stage keeps its state, e.g. the dedup index). The manifest records, per stage, how many documents
and bytes went in and came out and why each removal happened; timings go to `timings.json`, outside the manifest,
so that the manifest (and the hash checkpoints record) is identical on every re-run.

The validation split is chosen by a hash of the document's content, so it is stable across runs; it is drawn after
exact and near dedup over the whole corpus, so no validation document has a (near) copy in train.

Trade-off: the corpus is held in memory between stages (simple, and fine for the default 12 MB corpus and for
hub streams bounded by `max_docs`); a multi-terabyte run would stream stages and write shards incrementally.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from codelm.data.budget import TIMED_OUT_REASON, DocumentTimeout, time_budget, timed_out_warning
from codelm.data.dedup import ExactDedup, NearDedup
from codelm.data.progress import Progress
from codelm.data.shards import write_shards
from codelm.data.sources import Document, documents_from
from codelm.data.stages import (RUNTIME_ONLY, DataConfig, StageStats, decontaminator,  # noqa: F401 (API)
                                 filter_stages, histogram, is_validation, reason_kind)
from codelm.errors import DataError

log = logging.getLogger("codelm.data")

def _doc_bytes(doc: Document) -> int:
    n = doc.meta.get("n_bytes")
    if n is None:
        n = doc.meta["n_bytes"] = len(doc.text.encode("utf-8"))
    return n


# --- running a stage, optionally across processes ---------------------------------------------------------------
_WORKER_STAGES: list = []  # inherited by forked workers, so the (large) stage objects are never pickled


class _TimedOut:
    """What `analyze` returns for a document that ran past the per-document time budget (survives pickling)."""


def _analyze_in_worker(job: tuple[int, Document, float]):
    stage_index, doc, budget = job
    return _analyze(_WORKER_STAGES[stage_index], doc, budget)


def _analyze(stage, doc: Document, budget: float):
    try:
        with time_budget(budget):
            return stage.analyze(doc)
    except DocumentTimeout:
        log.warning(timed_out_warning(stage.name, doc.id, budget))
        return _TimedOut()


def _decide(stage, doc: Document, result) -> str | None:
    if isinstance(result, _TimedOut):
        return f"{TIMED_OUT_REASON} ({stage.name})"
    return stage.decide(doc, result)


def run_stage(stage, docs: Iterable[Document], stats: StageStats, pool=None, stage_index: int = -1,
              progress_seconds: float = 0.0, doc_seconds: float = 0.0) -> Iterator[Document]:
    """Yield the documents `stage` keeps, counting the rest by reason (with up to 5 example ids each)."""
    docs = list(docs)
    progress = Progress(stage.name, len(docs), sum(map(_doc_bytes, docs)), progress_seconds)
    t0 = time.perf_counter()
    if hasattr(stage, "analyze") and getattr(stage, "parallel", True) and pool is not None and stage_index >= 0:
        results = pool.imap(_analyze_in_worker, ((stage_index, d, doc_seconds) for d in docs), chunksize=4)
        decisions = (_decide(stage, d, r) for d, r in zip(docs, results))
    elif hasattr(stage, "analyze"):
        decisions = (_decide(stage, d, _analyze(stage, d, doc_seconds)) for d in docs)
    else:
        decisions = (stage.keep(d) for d in docs)
    kept = []
    for doc, reason in zip(docs, decisions):
        size = _doc_bytes(doc)
        stats.docs_in += 1
        stats.bytes_in += size
        progress.update(size)
        if reason is None:
            stats.docs_out += 1
            stats.bytes_out += size
            kept.append(doc)
        else:
            stats.removed[reason] += 1
            examples = stats.examples.setdefault(reason, [])
            if len(examples) < 5:
                examples.append(doc.id)
    stats.seconds += time.perf_counter() - t0
    if progress_seconds and stats.seconds > progress_seconds:
        log.info("%s done: %s", stage.name, progress.line())
    return iter(kept)


def load_documents(cfg: DataConfig, rejects: list) -> Iterator[Document]:
    extensions = tuple(e.strip() for e in cfg.extensions.split(",") if e.strip())
    return documents_from(cfg.source, rejects, extensions=extensions, text_field=cfg.text_field,
                          hf_split=cfg.hf_split, max_docs=cfg.max_docs)


def build_stages(cfg: DataConfig) -> list:
    """Every enabled stage, in order (the in-memory pipeline)."""
    stages = filter_stages(cfg)
    if cfg.exact_dedup:
        stages.append(ExactDedup())
    if cfg.near_dedup:
        stages.append(NearDedup(cfg.near_dedup_threshold))
    if cfg.decontaminate:
        stages.append(decontaminator(cfg))
    return stages


@dataclass
class FilteredCorpus:
    docs: list[Document]
    manifest: dict
    timings: dict


def filter_documents(cfg: DataConfig) -> FilteredCorpus:
    """Read the sources and run every enabled stage; the kept documents and the manifest so far."""
    global _WORKER_STAGES
    t_start = time.perf_counter()
    rejects: list[tuple[str, str]] = []
    t0 = time.perf_counter()
    docs = list(load_documents(cfg, rejects))
    read_s = time.perf_counter() - t0
    n_in, bytes_in = len(docs), sum(map(_doc_bytes, docs))
    log.info("read %s documents (%.1f MB) from %s in %.1fs; %d unreadable", f"{n_in:,}", bytes_in / 1e6,
             cfg.source, read_s, len(rejects))
    if not docs:
        raise DataError(f"source {cfg.source!r}: no documents found" + (
            f" ({len(rejects)} skipped, e.g. {rejects[0][0]}: {rejects[0][1]})" if rejects else ""))
    stages = build_stages(cfg)
    stats = [StageStats(s.name) for s in stages]
    _WORKER_STAGES = stages
    pool = _make_pool(cfg.workers) if len(docs) >= 64 else None
    try:
        kept: Iterable[Document] = docs
        for i, (stage, st) in enumerate(zip(stages, stats)):
            kept = run_stage(stage, kept, st, pool, i, cfg.progress_seconds, cfg.doc_seconds)
        kept = list(kept)
    finally:
        if pool is not None:
            pool.terminate()
        _WORKER_STAGES = []
    if not kept:
        raise DataError(f"source {cfg.source!r}: no usable documents remain after filtering ("
                        + ", ".join(f"{s.name}: -{s.docs_in - s.docs_out}" for s in stats) + ")")
    manifest = {
        "source": cfg.source,
        "config": {k: v for k, v in vars(cfg).items() if k not in RUNTIME_ONLY},
        "unreadable": {"count": len(rejects), "examples": [list(r) for r in rejects[:20]],
                       "reasons": dict(sorted(Counter(reason_kind(why) for _, why in rejects).items()))},
        "input": {"docs": n_in, "bytes": bytes_in},
        "stages": [s.to_dict() for s in stats],
        "decontaminated": False,
    }
    for stage in stages:
        if stage.name == "decontaminate":
            manifest["decontaminated"] = True
            manifest["decontamination"] = stage.describe()
        if stage.name == "edu_score":
            manifest["edu_scores"] = {"threshold": stage.threshold, "scorer": cfg.edu_scorer,
                                      "histogram": histogram(stage.scores, 0.0, 1.0, 20)}
    timings = {"read": {"seconds": round(read_s, 3), "mb_per_s": round(bytes_in / 1e6 / max(read_s, 1e-9), 2)},
               "stages": [s.timing() for s in stats], "filter_seconds": round(time.perf_counter() - t_start, 3)}
    return FilteredCorpus(kept, manifest, timings)


def _make_pool(num_workers: int):
    if num_workers <= 1:
        return None
    try:  # fork: workers inherit _WORKER_STAGES (the decontamination index, the scorer) instead of unpickling them
        return multiprocessing.get_context("fork").Pool(num_workers)
    except (ValueError, OSError):
        return None


def split_documents(docs: list[Document], fraction: float, where: str) -> dict[str, list[Document]]:
    split_docs = {"train": [], "val": []}
    for doc in docs:
        split_docs["val" if is_validation(doc, fraction) else "train"].append(doc)
    if not split_docs["val"] and len(docs) > 1:  # tiny corpora: still hold one document out
        split_docs["val"].append(split_docs["train"].pop())
    if not split_docs["train"]:
        raise DataError(f"source {where!r}: too few documents to make a training split")
    return split_docs


def prepare(cfg: DataConfig) -> dict:
    """Run the pipeline (on datatrove, streaming, see pipeline.py) and write shards; returns the index written."""
    if cfg.executor not in ("local", "slurm", "ray"):
        raise DataError(f"--executor {cfg.executor!r}: expected local, slurm or ray")
    if cfg.tasks < 1 or cfg.workers < 1:
        raise DataError(f"--tasks {cfg.tasks} --workers {cfg.workers}: both must be at least 1")
    if cfg.dry_run and cfg.executor != "slurm":
        raise DataError("--dry-run writes Slurm scripts: it needs --executor slurm")
    from codelm.data.stages import IndexBuild
    index_build = IndexBuild(cfg) if cfg.decontaminate else None  # meanwhile: datatrove's imports, the tokenizer
    try:
        from codelm.data.pipeline import run
        return run(cfg, index_build)
    finally:
        if index_build:
            index_build.close()


def prepare_in_memory(cfg: DataConfig) -> dict:
    """The earlier pipeline: the whole corpus in memory between stages, one process pool (kept as the reference
    the benchmark and the equivalence tests compare the streaming pipeline with)."""
    from codelm.tokenizer import get_tokenizer

    tokenizer = get_tokenizer(cfg.tokenizer)
    t_start = time.perf_counter()
    corpus = filter_documents(cfg)
    split_docs = split_documents(corpus.docs, cfg.val_fraction, cfg.source)

    t_tok = time.perf_counter()
    tokens, n_bytes = {}, {}
    for name, ds in split_docs.items():
        tokens[name] = tokenizer.encode_batch([d.text for d in ds], num_threads=cfg.num_threads)
        n_bytes[name] = sum(map(_doc_bytes, ds))
    tok_seconds = time.perf_counter() - t_tok
    manifest = corpus.manifest
    manifest.update({
        "tokenization": {"tokens": {k: sum(map(len, v)) for k, v in tokens.items()}, "bytes": n_bytes},
        "documents": {k: len(v) for k, v in split_docs.items()},
        "doc_tokens": histogram(np.log10([max(1, len(t)) for v in tokens.values() for t in v]), 0, 6, 24),
        "val_dedup": "exact+near dedup over the whole corpus before the split" if cfg.near_dedup else (
            "exact dedup before the split" if cfg.exact_dedup else "none"),
        "val_ids": [d.id for d in split_docs["val"]][:1000],
    })
    total_bytes = sum(n_bytes.values())
    timings = dict(corpus.timings, tokenize={"seconds": round(tok_seconds, 3),
                                             "mb_per_s": round(total_bytes / 1e6 / max(tok_seconds, 1e-9), 2)})
    timings["total_seconds"] = round(time.perf_counter() - t_start, 3)
    out = write_shards(cfg.out, tokens, n_bytes, tokenizer, manifest, timings=timings)
    log.info("wrote %s in %.1fs", out, time.perf_counter() - t_start)
    return json.loads((Path(out) / "index.json").read_text())

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

import hashlib
import json
import logging
import multiprocessing
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from codelm.config import option
from codelm.data.budget import TIMED_OUT_REASON, DocumentTimeout, time_budget
from codelm.data.dedup import ExactDedup, NearDedup
from codelm.data.filters import QualityConfig, QualityFilter
from codelm.data.progress import Progress
from codelm.data.shards import write_shards
from codelm.data.sources import Document, documents_from
from codelm.errors import DataError

log = logging.getLogger("codelm.data")

# options that change how fast, not what: left out of the manifest so its hash does not depend on them
RUNTIME_ONLY = ("out", "num_threads", "workers", "progress_seconds", "executor", "tasks", "work_dir", "keep_work",
                "slurm_partition", "slurm_time", "slurm_cpus", "slurm_qos", "slurm_sbatch_args", "dry_run",
                "ray_address")


@dataclass
class DataConfig:
    out: str = option("data/stdlib", "output shard directory")
    source: str = option("stdlib", "comma-separated: 'stdlib', 'site-packages' (opt-in), a directory of code, a "
                                   "JSONL/Parquet file, or hf:NAME (a Hugging Face dataset, streamed)")
    extensions: str = option(".py", "file extensions to take from directories (comma-separated)")
    text_field: str = option("content", "JSONL/Parquet/hub column holding the code")
    hf_split: str = option("train", "split of a hf:NAME source")
    max_docs: int = option(0, "read at most this many rows from a Parquet/hub source (0 = all)")
    tokenizer: str = option("cl100k_base:16384", "tokenizer: cl100k_base, cl100k_base:N (ranks below N), or hf:DIR "
                                                 "(a Hugging Face model's or imported checkpoint's tokenizer.json)")
    val_fraction: float = option(0.02, "share of documents held out for validation")
    min_bytes: int = option(16, "drop documents smaller than this")
    max_bytes: int = option(1_000_000, "drop documents larger than this")
    quality_filter: bool = option(True, "Gopher-style heuristic filters adapted to code (filters.py)")
    max_line_length: int = option(1000, "quality: drop files with a longer line (minified, blobs)")
    max_mean_line_length: float = option(100.0, "quality: drop files whose mean non-blank line is longer")
    min_alnum_fraction: float = option(0.25, "quality: drop files with fewer alphanumeric characters")
    max_dup_line_fraction: float = option(0.5, "quality: drop files with more duplicated (>=10 char) lines")
    max_dup_ngram_fraction: float = option(0.6, "quality: drop files with more words inside repeated 10-grams")
    max_literal_line_fraction: float = option(0.5, "quality: drop data-like files with more literal-only lines")
    edu_threshold: float = option(0.2, "drop Python files whose educational-value score is lower (0 = off)")
    edu_scorer: str = option("heuristic", "'heuristic' or 'module:function' (a trained classifier, text -> [0,1])")
    exact_dedup: bool = option(True, "drop exact duplicates (hash of whitespace-normalized content)")
    near_dedup: bool = option(True, "drop near duplicates (MinHash LSH over 5-gram word shingles)")
    near_dedup_threshold: float = option(0.8, "near dedup: estimated Jaccard similarity that counts as duplicate")
    decontaminate: bool = option(True, "drop documents overlapping HumanEval/MBPP/HumanEval-infilling")
    decontam_benchmarks: str = option("humaneval,mbpp,humaneval-infilling", "benchmarks to decontaminate against")
    decontam_ngram: int = option(13, "decontamination: n-gram length in normalized code tokens")
    decontam_min_overlap: float = option(0.4, "decontamination: share of a benchmark solution's n-grams that "
                                                "flags a document")
    decontam_text_ngram: int = option(13, "decontamination: word n-gram length for problem statements (0 = off)")
    data_dir: str = option("", "benchmark data directory (default: $CODELM_DATA_DIR where it holds a file, else "
                               "the copy packaged with codelm)")
    num_threads: int = option(2, "tokenizer threads (the in-memory pipeline)")
    executor: str = option("local", "where tasks run: 'local' (processes here), 'slurm' (job arrays), 'ray'")
    tasks: int = option(2, "split the corpus into this many tasks (one token file per split per task)")
    workers: int = option(2, "local executor: tasks run at once (processes)")
    work_dir: str = option("", "intermediate files (candidates, signatures, buckets, stats; default OUT.work), "
                               "removed after a successful run; a rerun resumes from its finished tasks")
    keep_work: bool = option(False, "keep the working directory after a successful run")
    slurm_partition: str = option("", "slurm: partition")
    slurm_time: str = option("4:00:00", "slurm: time limit per task")
    slurm_cpus: int = option(1, "slurm: CPUs per task")
    slurm_qos: str = option("", "slurm: quality of service")
    slurm_sbatch_args: str = option("", "slurm: extra sbatch options, e.g. '--account=x --mem=8G'")
    dry_run: bool = option(False, "slurm: write each stage's sbatch script and submit.sh, submit nothing")
    ray_address: str = option("", "ray: cluster address (empty = start a local Ray)")
    doc_seconds: float = option(30.0, "per-document time budget of each stage: a document still running after it "
                                      "is rejected and named, instead of stalling the run (0 = none)")
    progress_seconds: float = option(5.0, "seconds between progress lines on long stages (0 = quiet)")


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
        """What the manifest records (no timings: those differ between runs of the same inputs)."""
        return {"name": self.name, "docs_in": self.docs_in, "docs_out": self.docs_out, "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out, "removed": dict(sorted(self.removed.items())),
                "examples": self.examples}

    def timing(self) -> dict:
        return {"name": self.name, "seconds": round(self.seconds, 3),
                "mb_per_s": round(self.bytes_in / 1e6 / max(self.seconds, 1e-9), 2)}


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
        log.warning("%s: %s took more than %.0fs; rejected", stage.name, doc.id, budget)
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


def decontaminator(cfg: DataConfig):
    from codelm.data.decontaminate import Decontaminator
    names = [b.strip() for b in cfg.decontam_benchmarks.split(",") if b.strip()]
    return Decontaminator(names, cfg.decontam_ngram, cfg.decontam_text_ngram, cfg.decontam_min_overlap,
                          cfg.data_dir or None)


def filter_stages(cfg: DataConfig) -> list:
    """The per-document stages before dedup: size, quality, educational value."""
    from codelm.data.educational import EduFilter
    stages = [SizeFilter(cfg.min_bytes, cfg.max_bytes)]
    if cfg.quality_filter:
        stages.append(QualityFilter(QualityConfig(
            max_line_length=cfg.max_line_length, max_mean_line_length=cfg.max_mean_line_length,
            min_alnum_fraction=cfg.min_alnum_fraction, max_dup_line_fraction=cfg.max_dup_line_fraction,
            max_dup_ngram_fraction=cfg.max_dup_ngram_fraction,
            max_literal_line_fraction=cfg.max_literal_line_fraction)))
    if cfg.edu_threshold > 0:
        stages.append(EduFilter(cfg.edu_threshold, cfg.edu_scorer))
    return stages


def is_validation(doc: Document, fraction: float) -> bool:
    h = int.from_bytes(hashlib.sha256(doc.text.encode("utf-8")).digest()[:8], "little")
    return (h % 1_000_000) < fraction * 1_000_000


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
                       "reasons": dict(sorted(Counter(_reason_kind(why) for _, why in rejects).items()))},
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


def _reason_kind(why: str) -> str:
    return why.split(" (")[0].split(":")[0]


def histogram(values, lo: float, hi: float, bins: int) -> dict:
    counts, edges = np.histogram(np.asarray(values, dtype=float), bins=bins, range=(lo, hi))
    return {"edges": [round(float(e), 4) for e in edges], "counts": counts.tolist()}


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
    from codelm.data.pipeline import run
    return run(cfg)


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

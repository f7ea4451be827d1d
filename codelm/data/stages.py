"""What every form of the data pipeline shares: its options (`DataConfig`), the per-document filter stages in their
order, the decontamination stage, the validation-split rule, stage statistics and the manifest's histograms.
prepare.py (the entry point and the in-memory reference) and pipeline.py (the streaming datatrove pipeline) both build
on this module, and neither on the other's internals."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass

import numpy as np

from codelm.config import option
from codelm.data.filters import QualityConfig, QualityFilter
from codelm.data.sources import Document

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
    doc_seconds: float = option(30.0, "per-document CPU-time budget of each stage: a document still running after it "
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


def decontaminator(cfg: DataConfig):
    from codelm.data.decontaminate import Decontaminator
    names = [b.strip() for b in cfg.decontam_benchmarks.split(",") if b.strip()]
    return Decontaminator(names, cfg.decontam_ngram, cfg.decontam_text_ngram, cfg.decontam_min_overlap,
                          cfg.data_dir or None)


class IndexBuild:
    """The decontamination index, pickled, built in a forked process while this one does its other start-up work
    (the streaming pipeline imports datatrove and loads the tokenizer meanwhile: the second core would idle through
    all of it). `result()` waits for the bytes; None when the build failed, and the caller builds the index itself,
    so that its error reads as it always did. `close()` ends a build whose result is not wanted."""

    def __init__(self, cfg: DataConfig):
        import multiprocessing
        import sys
        for stream in (sys.stdout, sys.stderr):  # the child must not write out a copy of what is buffered here
            stream.flush()
        ctx = multiprocessing.get_context("fork")
        self._recv, send = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=self._build, args=(cfg, send), daemon=True)
        self._proc.start()
        send.close()

    @staticmethod
    def _build(cfg: DataConfig, send) -> None:
        import pickle
        try:
            data = pickle.dumps(decontaminator(cfg))
        except BaseException:
            data = b""
        send.send_bytes(data)
        send.close()

    def result(self) -> bytes | None:
        try:
            data = self._recv.recv_bytes()
        except EOFError:
            data = b""
        self._recv.close()
        self._proc.join()
        return data or None

    def close(self) -> None:
        if not self._recv.closed:  # the result was not taken: the child is building, or blocked sending it
            self._proc.kill()
            self._recv.close()
        self._proc.join()


def is_validation(doc: Document, fraction: float) -> bool:
    h = int.from_bytes(hashlib.sha256(doc.text.encode("utf-8")).digest()[:8], "little")
    return (h % 1_000_000) < fraction * 1_000_000


def reason_kind(why: str) -> str:
    return why.split(" (")[0].split(":")[0]


def histogram(values, lo: float, hi: float, bins: int) -> dict:
    counts, edges = np.histogram(np.asarray(values, dtype=float), bins=bins, range=(lo, hi))
    return {"edges": [round(float(e), 4) for e in edges], "counts": counts.tolist()}

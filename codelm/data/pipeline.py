"""`codelm data prepare` on datatrove: the corpus streamed through tasks, never held in memory.

Four datatrove executor runs, each a list of pipeline steps, chained (a run starts when the one before finished):

    filter  (N tasks)  sources (this task's share) ─► size ─► quality ─► edu score ─► decontamination test
                       (recorded, applied after dedup) ─► candidates on disk + exact-dedup keys, full MinHash
                       signatures, and datatrove's per-bucket signature files
    buckets (B tasks)  datatrove's MinhashDedupBuckets: candidate near-duplicate pairs, merged from sorted files
    cluster (1 task)   ours: exact duplicates (sorted keys, merged), near duplicates (candidate pairs checked);
                       which documents each task drops
    shards  (N tasks)  candidates ─► minus duplicates ─► minus contaminated ─► validation split ─► tokenize
                       ─► one token file per split per task

All the heavy per-document work is in the filter run, so the two cores are busy together once, and the later runs
are short (a task that ends early idles its core until the run's last task ends).

Where a local 2-task run could lose time against half a 1-task run, and what is done about it: the start-up before
the filter run (the decontamination index is built in a forked process meanwhile, see stages.IndexBuild), each run's
own start (datatrove's LocalPipelineExecutor without its per-run Manager process, see local_executor), the tasks'
shares (files dealt by bytes, a file weighing at most 128 kB, see sources.deal_files) and the cyclic garbage
collector (see _few_collections). Measured in CPU seconds: two tasks together spend what one task does; the critical
path (start-up, then each run's slowest task) is 1.01x half of a 1-task run on a quarter of the installed packages'
sources (58 MB) and 1.16x on the 12 MB standard library, where the start-up (0.5 s) weighs more. Under load two
processes at once each ran ~12% slower here than one alone; quiet, they scale 1.9-2.1x (`benchmarks/bench_data.py`
prints that ceiling beside the 2-task ratio).

Then this process assembles index.json and one manifest from every task's stats file.

Determinism: every document carries its *order*, its position in the sources (source number, then file number,
byte offset or row number), whatever task read it. Of each set of (exact or near) duplicates the document first in
that order stays, so the kept set, the removal counts and the manifest do not depend on the number of tasks;
examples in the manifest are the first ones in that order. (datatrove's own cluster stage keeps the union-find root,
which depends on how files were split into tasks; ours does not use it.) Near duplicates: shingles of code-aware
tokens (words, numbers and each punctuation mark, case kept — datatrove's default normalization lowercases and
drops punctuation and numbers, wrong for code); documents sharing an LSH band are candidates, the bands sized so
that the detection probability is one half at `near_dedup_threshold` (15 bands of 12 hashes for 0.8). A candidate
is a near duplicate when a kept document earlier in source order shares a band with it and their full signatures
agree on at least `near_dedup_threshold` of the 180 hashes (the estimated Jaccard similarity): the in-memory
pipeline's rule. It depends on the groups of documents sharing a band and on the signatures, not on which pairs
datatrove's bucket stage happens to write (that depends on the task split).

Resumption: datatrove writes a completion marker per task after its last step; every file a task writes goes to a
temp name first and is renamed when complete, so a rerun after kill -9 skips finished tasks, redoes the others from
scratch and produces the same bytes. The working directory (default OUT.work) records the options that shape its
contents; a working directory made with other options is refused. It is removed after a successful run.
Disk cost of the working directory: the candidate texts (about the corpus size, uncompressed), 36 bytes
per document of keys, 4 bytes per hash per document twice (datatrove's per-band signature files and the full
signatures: 180 hashes by default, 1.5 kB a document) and the candidate pairs.
"""

from __future__ import annotations

import heapq
import json
import logging
import os
import shutil
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.minhash import MinhashDedupBuckets, MinhashDedupSignature
from datatrove.utils.typeshelper import StatHints
from datatrove.utils.word_tokenizers import WordTokenizer

from codelm.data.budget import (TIMED_OUT_REASON, TOKEN_CACHE_ENTRIES, DocumentTimeout, time_budget,
                                 timed_out_warning)
from codelm.data.sources import Document as CodeDocument
from codelm.data.stages import (RUNTIME_ONLY, decontaminator, filter_stages, histogram, is_validation,
                                 reason_kind)
from codelm.errors import DataError

log = logging.getLogger("codelm.data")

EXAMPLES = 5             # examples per removal reason in the manifest
WORK_LAYOUT = 2          # what the working directory holds; one left by code of another layout is refused
ORDER_SHIFT = 1 << 44    # order = source number * 2^44 + position in that source
KEY_DTYPE = np.dtype([("key", "S16"), ("order", "<i8"), ("idx", "<u4"), ("bytes", "<i8")])


# --------------------------------------------------------------------------------------------------------------
# stats every task writes (merged into the manifest)
# --------------------------------------------------------------------------------------------------------------
class StageCounter:
    """Counts for one stage in one task; examples are (order, id) pairs so that merging can take the first ones in
    source order, whatever task saw them."""

    def __init__(self, name: str):
        self.name = name
        self.docs_in = self.docs_out = self.bytes_in = self.bytes_out = 0
        self.seconds = 0.0
        self.removed: Counter = Counter()
        self.examples: dict[str, list] = {}

    def count(self, order: int, doc_id: str, size: int, reason: str | None) -> None:
        self.docs_in += 1
        self.bytes_in += size
        if reason is None:
            self.docs_out += 1
            self.bytes_out += size
            return
        self.removed[reason] += 1
        ex = self.examples.setdefault(reason, [])
        heapq.heappush(ex, (-order, doc_id))  # a max-heap of the EXAMPLES smallest orders
        if len(ex) > EXAMPLES:
            heapq.heappop(ex)

    def to_json(self) -> dict:
        return {"name": self.name, "docs_in": self.docs_in, "docs_out": self.docs_out, "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out, "seconds": self.seconds, "removed": dict(self.removed),
                "examples": {r: sorted((-o, i) for o, i in ex) for r, ex in self.examples.items()}}


def merge_stage_stats(parts: list[dict]) -> dict:
    out = {"name": parts[0]["name"], "docs_in": 0, "docs_out": 0, "bytes_in": 0, "bytes_out": 0, "seconds": 0.0,
           "removed": Counter(), "examples": {}}
    for p in parts:
        for k in ("docs_in", "docs_out", "bytes_in", "bytes_out", "seconds"):
            out[k] += p[k]
        out["removed"].update(p["removed"])
        for reason, ex in p["examples"].items():
            out["examples"].setdefault(reason, []).extend(map(tuple, ex))
    out["removed"] = dict(sorted(out["removed"].items()))
    out["examples"] = {r: [i for _, i in sorted(ex)[:EXAMPLES]] for r, ex in sorted(out["examples"].items())}
    return out


def _atomic_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, sort_keys=True, default=str))
    tmp.replace(path)


# --------------------------------------------------------------------------------------------------------------
# the steps (datatrove PipelineSteps; this module is imported only when a pipeline runs)
# --------------------------------------------------------------------------------------------------------------

class ReadSources(PipelineStep):
    """This task's share of the sources (see sources.task_documents), with each document's order."""
    name, type = "sources", "codelm"

    def __init__(self, cfg, work: Path):
        super().__init__()
        self.cfg, self.work = cfg, work

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        from codelm.data.progress import TaskProgress
        from codelm.data.sources import task_documents
        rejects: list = []
        counter = StageCounter("read")
        share: dict = {}
        progress = TaskProgress(self.work / "progress" / "filter", rank)
        t0 = time.perf_counter()
        for order, doc in task_documents(self.cfg, rank, world_size, rejects, share):
            size = len(doc.text.encode("utf-8"))
            counter.count(order, doc.id, size, None)
            progress.update(size, share.get("bytes"))
            yield Document(text=doc.text, id=doc.id, metadata={"order": order, "n_bytes": size,
                                                               "source": doc.source})
        counter.seconds = time.perf_counter() - t0
        progress.finish()
        _atomic_json(self.work / "stats" / "read" / f"{rank:05d}.json",
                     {"read": counter.to_json(), "rejects": rejects})

class CodeStage(PipelineStep):
    """One of our per-document stages (size, quality, edu score, decontaminate), with its decisions, a
    per-document time budget and its counts."""
    type = "codelm"

    def __init__(self, make_stage, stage_name: str, work: Path, phase: str, doc_seconds: float,
                 progress_seconds: float):
        super().__init__()
        self.make_stage, self.name, self.work, self.phase = make_stage, stage_name, work, phase
        self.doc_seconds, self.progress_seconds = doc_seconds, progress_seconds

    def run(self, data, rank: int = 0, world_size: int = 1):
        stage = self.make_stage()
        counter = StageCounter(stage.name)
        dropped = []
        for doc in data:
            t0 = time.perf_counter()
            code_doc = CodeDocument(doc.id, doc.text, doc.metadata.get("source", ""), doc.metadata)
            try:
                with time_budget(self.doc_seconds):
                    reason = (stage.decide(code_doc, stage.analyze(code_doc)) if hasattr(stage, "analyze")
                              else stage.keep(code_doc))
            except DocumentTimeout:
                log.warning(timed_out_warning(stage.name, doc.id, self.doc_seconds))
                reason = f"{TIMED_OUT_REASON} ({stage.name})"
            counter.seconds += time.perf_counter() - t0
            counter.count(doc.metadata["order"], doc.id, doc.metadata["n_bytes"], reason)
            if reason and getattr(stage, "dropped", None) and stage.dropped[-1]["id"] == doc.id:
                dropped.append((doc.metadata["order"], stage.dropped[-1]))
            if reason is None:
                yield doc
        extra = {}
        if hasattr(stage, "scores"):
            extra["scores"] = stage.scores
        if hasattr(stage, "dropped"):
            extra["dropped"] = sorted(dropped, key=lambda x: x[0])[:1000]
        _atomic_json(self.work / "stats" / self.phase / stage.name / f"{rank:05d}.json",
                     {"stage": counter.to_json(), **extra})

class CheckDecontamination(PipelineStep):
    """The decontamination test, run in the filter run (with the other per-document work, so that the shards run
    is light and its tasks end together) and recorded on each candidate; ApplyDecontamination acts on it after
    dedup, so its counts are those of the stage in its place (after dedup, as in the in-memory pipeline)."""
    name, type = "decontamination check", "codelm"

    def __init__(self, make_stage, work: Path, doc_seconds: float):
        super().__init__()
        self.make_stage, self.work, self.doc_seconds = make_stage, work, doc_seconds

    def run(self, data, rank: int = 0, world_size: int = 1):
        stage = self.make_stage()
        seconds = 0.0
        for doc in data:
            t0 = time.perf_counter()
            code_doc = CodeDocument(doc.id, doc.text, doc.metadata.get("source", ""), doc.metadata)
            try:
                with time_budget(self.doc_seconds):
                    reason = stage.decide(code_doc, stage.analyze(code_doc))
            except DocumentTimeout:
                log.warning(timed_out_warning(stage.name, doc.id, self.doc_seconds))
                reason = f"{TIMED_OUT_REASON} ({stage.name})"
            seconds += time.perf_counter() - t0
            if reason:
                doc.metadata["decontam"] = reason
                if stage.dropped and stage.dropped[-1]["id"] == doc.id:
                    doc.metadata["decontam_row"] = stage.dropped.pop()
            yield doc
        _atomic_json(self.work / "stats" / "filter_decontaminate" / f"{rank:05d}.json", {"seconds": seconds})


class ApplyDecontamination(PipelineStep):
    """Drops the candidates CheckDecontamination flagged, counting them as the decontaminate stage."""
    name, type = "decontaminate", "codelm"

    def __init__(self, work: Path):
        super().__init__()
        self.work = work

    def run(self, data, rank: int = 0, world_size: int = 1):
        counter = StageCounter("decontaminate")
        dropped = []
        for doc in data:
            reason = doc.metadata.get("decontam")
            counter.count(doc.metadata["order"], doc.id, doc.metadata["n_bytes"], reason)
            if reason and doc.metadata.get("decontam_row"):
                dropped.append((doc.metadata["order"], doc.metadata["decontam_row"]))
            if reason is None:
                yield doc
        _atomic_json(self.work / "stats" / "shards" / "decontaminate" / f"{rank:05d}.json",
                     {"stage": counter.to_json(), "dropped": sorted(dropped, key=lambda x: x[0])[:1000]})


class WriteCandidates(PipelineStep):
    """The documents that passed the per-document stages, as JSONL, plus their exact-dedup keys (sorted); each
    file renamed into place when complete."""
    name, type = "candidates", "codelm"

    def __init__(self, work: Path):
        super().__init__()
        self.work = work

    def run(self, data, rank: int = 0, world_size: int = 1):
        from codelm.data.dedup import exact_key
        folder = self.work / "candidates"
        folder.mkdir(parents=True, exist_ok=True)
        tmp_docs = folder / f".{rank:05d}.jsonl.tmp-{os.getpid()}"
        keys = []
        with open(tmp_docs, "w", encoding="utf-8") as fd:
            for idx, doc in enumerate(data):
                order = doc.metadata["order"]
                fd.write(json.dumps({"id": doc.id, "text": doc.text, "order": order,
                                     "source": doc.metadata.get("source", ""),
                                     "edu_score": doc.metadata.get("edu_score"),
                                     "decontam": doc.metadata.get("decontam"),
                                     "decontam_row": doc.metadata.get("decontam_row")}) + "\n")
                keys.append((exact_key(doc.text)[:16], order, idx, doc.metadata["n_bytes"]))
                yield doc
        arr = np.array(keys, dtype=KEY_DTYPE)
        arr.sort(order=["key", "order"])
        tmp_keys = folder / f".{rank:05d}.keys.npy.tmp-{os.getpid()}"
        with open(tmp_keys, "wb") as fk:
            np.save(fk, arr)
        tmp_keys.replace(folder / f"{rank:05d}.keys.npy")
        tmp_docs.replace(folder / f"{rank:05d}.jsonl")


class CodeWordTokenizer(WordTokenizer):
    """Words and numbers whole, each punctuation mark its own token, case kept (datatrove's default word
    tokenizers need spaCy/NLTK data and are made for prose)."""

    def word_tokenize(self, text: str) -> list[str]:
        return _code_tokens(text)

    def sent_tokenize(self, text: str) -> list[str]:
        return text.splitlines()

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        import re
        return [m.span() for m in re.finditer(r"\w+|\S", text)]


SIG_CHUNK = 1024  # shingles per step of the signature: bounds its temporary at 1024 x hashes x 8 bytes


class CodeMinhashSignature(MinhashDedupSignature):
    """datatrove's signature stage (its bucket files, which its bucket stage reads) with code-aware shingles and a
    faster permutation family; it also keeps each document's full signature (for verifying candidate pairs).

    Shingles: words, numbers and every punctuation mark are tokens, case kept (datatrove's default simplify_text
    lowercases and drops punctuation and numbers). Permutations: multiply-add-shift hashing, h -> (a*h + b) mod 2^64
    with a odd, the top 32 bits kept (Dietzfelbinger's 2-universal family for 32-bit keys): numpy does it in three
    vector passes, where datatrove's (a*h + b) mod (2^61 - 1) spends most of the stage in 64-bit divisions."""
    name = "code minhash signatures"

    def __init__(self, output_folder, config):
        super().__init__(output_folder=output_folder, config=config, language=CodeWordTokenizer())
        self.folder = Path(output_folder)

    @property
    def parameters(self):
        if self._parameters is None:
            gen = np.random.default_rng(self.config.seed)
            self._parameters = (gen.integers(0, 2**64, size=self.num_hashes, dtype=np.uint64, endpoint=False)
                                | np.uint64(1),
                                gen.integers(0, 2**64, size=self.num_hashes, dtype=np.uint64, endpoint=False))
        return self._parameters

    def get_shingles(self, text: str) -> np.ndarray:
        return code_shingles(text, self.config.n_grams, self._hash_func)

    def signature(self, shingles: np.ndarray) -> np.ndarray:
        """uint32 [num_hashes]: per permutation, the smallest permuted shingle (its top 32 bits)."""
        a, b = self.parameters
        sig = np.full(self.num_hashes, np.iinfo(np.uint64).max, dtype=np.uint64)
        flat = shingles.reshape(-1)
        for start in range(0, len(flat), SIG_CHUNK):
            t = np.multiply.outer(a, flat[start:start + SIG_CHUNK])  # hashes x chunk: the min runs along rows
            t += b[:, None]
            np.minimum(sig, t.min(axis=1), out=sig)
        return (sig >> np.uint64(32)).astype(np.uint32)

    def get_signature(self, shingles: np.ndarray) -> list[list[int]]:
        return [x.tolist() for x in np.split(self.signature(shingles), self.config.num_buckets)]

    def run(self, data, rank: int = 0, world_size: int = 1):
        """Per document: its full signature (row `idx` of full/RANK.sig, for the cluster step) and, per band, a
        datatrove record (the band's hashes, idx) in bucket_BBB/RANK.minhash.sig, sorted as its bucket stage
        expects. Documents without a token get no records (as in datatrove) and a row of ones in full/.
        Every file goes to a temporary name first and is renamed when complete."""
        cfg = self.config
        bands, per = cfg.num_buckets, cfg.hashes_per_bucket
        record = np.dtype([(f"field{i + 1}", "<u4") for i in range(per)] + [(f"field{per + 1}", "<u4")])
        tmp = f".tmp-{os.getpid()}"
        paths = [self.folder / f"bucket_{bi:03d}" / f"{rank:05d}.minhash.sig" for bi in range(bands)]
        full_path = self.folder / "full" / f"{rank:05d}.sig"
        for p in paths + [full_path]:
            p.parent.mkdir(parents=True, exist_ok=True)
        own = 0.0  # this step's own seconds
        with self.track_time():
            outs = [open(p.with_name(p.name + tmp), "wb") for p in paths]
            full = open(full_path.with_name(full_path.name + tmp), "wb")
            rows, idxs = [], []

            def flush():
                if rows:
                    sigs = np.stack(rows).reshape(len(rows), bands, per)
                    for bi, fh in enumerate(outs):
                        rec = np.empty(len(rows), dtype=record)
                        for i in range(per):
                            rec[f"field{i + 1}"] = sigs[:, bi, i]
                        rec[f"field{per + 1}"] = idxs
                        fh.write(rec.tobytes())
                rows.clear()
                idxs.clear()

            for idx, doc in enumerate(data):  # (pulling a document runs the steps before this one)
                t_doc = time.perf_counter()
                self.stat_update(StatHints.total)
                shingles = self.get_shingles(doc.text)
                if shingles.size:
                    sig = self.signature(shingles)
                    rows.append(sig)
                    idxs.append(idx)
                    if len(rows) >= 1024:
                        flush()
                else:
                    sig = np.full(self.num_hashes, np.iinfo(np.uint32).max, dtype=np.uint32)
                full.write(sig.tobytes())
                own += time.perf_counter() - t_doc
            t_end = time.perf_counter()
            flush()
            for fh in outs + [full]:
                fh.close()
            for p in paths:  # sort each band's records (datatrove's bucket stage merges sorted files)
                t = p.with_name(p.name + tmp)
                rec = np.fromfile(t, dtype=record)
                rec = rec[np.lexsort([rec[n] for n in reversed(record.names)])]
                rec.tofile(t)
                t.replace(p)
            full_path.with_name(full_path.name + tmp).replace(full_path)
        # the near_dedup stage's timing in the manifest's timings: this, plus its share of the cluster step
        _atomic_json(self.folder.parent.parent / "stats" / "filter_minhash" / f"{rank:05d}.json",
                     {"seconds": own + time.perf_counter() - t_end})
        return iter(())


class Cluster(PipelineStep):
    """Exact and near duplicates across all tasks; writes, per filter task, which candidates to drop."""
    name, type = "cluster", "codelm"

    def __init__(self, work: Path, n_tasks: int, exact: bool, near: bool, threshold: float):
        super().__init__()
        self.work, self.n_tasks, self.exact, self.near, self.threshold = work, n_tasks, exact, near, threshold

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        cluster(self.work, self.n_tasks, self.exact, self.near, self.threshold)
        return iter(())

class ReadCandidates(PipelineStep):
    """The candidates of filter task `rank`, minus the duplicates the cluster step chose to drop."""
    name, type = "candidates reader", "codelm"

    def __init__(self, work: Path):
        super().__init__()
        self.work = work

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        from codelm.data.progress import TaskProgress
        drop_file = self.work / "cluster" / f"{rank:05d}.drop.npy"
        drop = set(np.load(drop_file).tolist()) if drop_file.is_file() else set()
        path = self.work / "candidates" / f"{rank:05d}.jsonl"
        progress = TaskProgress(self.work / "progress" / "shards", rank, path.stat().st_size)
        with open(path, encoding="utf-8") as f:
            for idx, line in enumerate(f):
                progress.update(len(line))
                if idx in drop:
                    continue
                row = json.loads(line)
                meta = {"order": row["order"], "n_bytes": len(row["text"].encode("utf-8")),
                        "source": row["source"]}
                for key in ("edu_score", "decontam", "decontam_row"):
                    if row.get(key) is not None:
                        meta[key] = row[key]
                yield Document(text=row["text"], id=row["id"], metadata=meta)
        progress.finish()

class TokenizeSplit(PipelineStep):
    """Validation split by content hash, tokenization, one token file per split for this task (streamed to
    disk as documents arrive)."""
    name, type = "tokenize", "codelm"

    def __init__(self, work: Path, tokenizer_name: str, val_fraction: float, single: bool):
        super().__init__()
        self.work, self.tokenizer_name, self.val_fraction, self.single = work, tokenizer_name, val_fraction, single

    def run(self, data, rank: int = 0, world_size: int = 1):
        from codelm.data.shards import token_dtype
        from codelm.tokenizer import get_tokenizer
        tok = get_tokenizer(self.tokenizer_name)
        dtype = token_dtype(tok.n_vocab)
        folder = self.work / "tokens"
        folder.mkdir(parents=True, exist_ok=True)
        state = {}
        for name in ("train", "val"):
            stem = name if self.single else f"{name}-{rank:05d}"
            tmp = folder / f".{stem}.bin.tmp-{os.getpid()}"
            state[name] = {"stem": stem, "tmp": tmp, "fh": open(tmp, "wb"), "offsets": [0], "bytes": 0,
                           "ids": []}
        doc_tokens = np.zeros(24, dtype=np.int64)  # histogram of log10(tokens per document), kept as counts
        t0 = time.perf_counter()
        batch: list = []

        def flush():
            lengths = []
            for doc, ids in zip(batch, tok.encode_batch([d.text for d in batch], num_threads=1)):
                s = state["val" if is_validation(doc, self.val_fraction) else "train"]
                np.asarray(ids + [tok.eot_id], dtype=dtype).tofile(s["fh"])
                s["offsets"].append(s["offsets"][-1] + len(ids) + 1)
                s["bytes"] += doc.metadata["n_bytes"]
                heapq.heappush(s["ids"], (-doc.metadata["order"], doc.id))  # the first 1000 in source order
                if len(s["ids"]) > 1000:
                    heapq.heappop(s["ids"])
                lengths.append(max(1, len(ids)))
            if lengths:
                doc_tokens[:] += np.histogram(np.log10(lengths), bins=24, range=(0, 6))[0]
            batch.clear()

        for doc in data:
            batch.append(doc)
            if len(batch) >= 64:
                flush()
            yield doc
        flush()
        entries = {}
        for name, s in state.items():
            s["fh"].flush()
            os.fsync(s["fh"].fileno())
            s["fh"].close()
            offsets = np.asarray(s["offsets"], dtype=np.int64)
            tmp_docs = folder / f".{s['stem']}.docs.npy.tmp-{os.getpid()}"
            with open(tmp_docs, "wb") as fh:
                np.save(fh, offsets)
            tmp_docs.replace(folder / f"{s['stem']}.docs.npy")
            s["tmp"].replace(folder / f"{s['stem']}.bin")
            entries[name] = {"file": f"{s['stem']}.bin", "docs_file": f"{s['stem']}.docs.npy",
                             "n_tokens": int(offsets[-1]), "n_docs": len(offsets) - 1, "n_bytes": s["bytes"],
                             "ids": sorted((-o, i) for o, i in s["ids"])}
        _atomic_json(self.work / "stats" / "tokenize" / f"{rank:05d}.json",
                     {"files": entries, "doc_tokens": doc_tokens.tolist(), "seconds": time.perf_counter() - t0})



CODE_TOKEN = None


def _code_tokens(text: str) -> list[str]:
    global CODE_TOKEN
    if CODE_TOKEN is None:
        import re
        CODE_TOKEN = re.compile(r"\w+|\S")  # \S: what \w+ did not take, one mark
    return CODE_TOKEN.findall(text)


def code_shingles(text: str, n: int, hash_func) -> np.ndarray:
    """Hashed n-grams of code-aware tokens (words and numbers whole, each punctuation mark its own token, case
    kept); a document shorter than n tokens is one shingle. Shape (k, 1), as datatrove's signature stage wants.
    Each distinct token is hashed once (`hash_func`, xxhash; cached), n-grams combine them by a polynomial mod
    2^32."""
    tokens = _code_tokens(text)
    if not tokens:
        return np.zeros((0, 1), dtype=np.uint64)
    cache = _TOKEN_HASHES
    if len(cache) >= TOKEN_CACHE_ENTRIES:
        cache.clear()
    values = list(map(cache.get, tokens))  # C speed; only new tokens are hashed below
    if None in values:
        for t in set(tokens).difference(cache):
            cache[t] = hash_func(t.encode("utf-8", "surrogatepass")) & 0xFFFFFFFF
        values = list(map(cache.get, tokens))
    h = np.array(values, dtype=np.uint64)
    if len(h) < n:
        h = np.pad(h, (0, n - len(h)))
    mult = _POLY.get(n)
    if mult is None:
        mult = _POLY[n] = np.array([1000003 ** i % (1 << 32) for i in range(n)], dtype=np.uint64)
    k = len(h) - n + 1
    combined = h[n - 1:] * mult[n - 1]  # sum of h[j + i] * mult[i]: uint64 wraps, a polynomial hash mod 2^64
    for i in range(n - 1):
        combined += h[i:i + k] * mult[i]
    combined &= np.uint64(0xFFFFFFFF)
    combined.sort()  # distinct values (np.unique's hash table costs ten times a sort here)
    distinct = np.empty(k, dtype=bool)
    distinct[0] = True
    np.not_equal(combined[1:], combined[:-1], out=distinct[1:])
    return combined[distinct].reshape((-1, 1))


_POLY: dict[int, np.ndarray] = {}
_TOKEN_HASHES: dict[str, int] = {}


# --------------------------------------------------------------------------------------------------------------
# the cluster step: exact and near duplicates across tasks
# --------------------------------------------------------------------------------------------------------------
def cluster(work: Path, n_tasks: int, exact: bool, near: bool, threshold: float) -> None:
    t0 = time.perf_counter()
    folder = work / "candidates"
    _ID_CACHE.clear()
    keys = [np.load(folder / f"{r:05d}.keys.npy", mmap_mode="r") for r in range(n_tasks)]
    drop: dict[int, dict[int, str]] = {r: {} for r in range(n_tasks)}  # rank -> {idx: reason}
    exact_stats, near_stats = StageCounter("exact_dedup"), StageCounter("near_dedup")
    # exact: every task's keys are sorted by (key, order); a k-way merge meets each key's copies together, first
    # the one first in source order
    if exact:
        def stream(r, arr):
            for k in arr:
                yield bytes(k["key"]), int(k["order"]), r, int(k["idx"])
        streams = [stream(r, arr) for r, arr in enumerate(keys)]
        last = None
        for key, order, r, idx in heapq.merge(*streams):
            if key == last:
                drop[r][idx] = "duplicate"
            last = key
    # near: candidates are documents sharing an LSH band (datatrove's bucket stage chains each band's group of
    # equal band signatures into pairs, in an order that depends on the task split: the groups do not). Rule, as
    # in the in-memory pipeline: in source order, a document is a near duplicate when a *kept* document earlier
    # in that order shares a band with it and their full signatures agree on at least `threshold` of the hashes
    # (the estimated Jaccard similarity of their shingle sets). Banding alone also pairs documents well below the
    # threshold (it finds a pair at 0.7 a third of the time); the check on the full signatures removes those.
    # Exact duplicates already dropped take no part. Nothing here depends on how files were split into tasks.
    if near:
        near_duplicates(work, keys, drop, threshold)
    for r, arr in enumerate(keys):
        for k in arr:
            idx, order, size = int(k["idx"]), int(k["order"]), int(k["bytes"])
            reason = drop[r].get(idx)
            exact_stats.count(order, _doc_id(work, r, idx) if reason == "duplicate" else "", size,
                              "duplicate" if reason == "duplicate" else None)
            if reason != "duplicate":
                near_stats.count(order, _doc_id(work, r, idx) if reason else "", size, reason)
    out = work / "cluster"
    out.mkdir(parents=True, exist_ok=True)
    for r in range(n_tasks):
        tmp = out / f".{r:05d}.drop.npy.tmp-{os.getpid()}"
        with open(tmp, "wb") as fh:
            np.save(fh, np.array(sorted(drop[r]), dtype=np.int64))
        tmp.replace(out / f"{r:05d}.drop.npy")
    exact_stats.seconds = near_stats.seconds = (time.perf_counter() - t0) / (int(exact) + int(near) or 1)
    stages = ([exact_stats.to_json()] if exact else []) + ([near_stats.to_json()] if near else [])
    _atomic_json(work / "stats" / "cluster.json", {"stages": stages})


def near_duplicates(work: Path, keys: list, drop: dict, threshold: float) -> None:
    """Marks near duplicates in `drop` (rank -> {idx: reason}); see the rule in cluster()."""
    order_of = []  # per task, each candidate's order by its index (8 bytes a document)
    for arr in keys:
        orders = np.zeros(len(arr), dtype=np.int64)
        orders[np.asarray(arr["idx"], dtype=np.int64)] = arr["order"]
        order_of.append(orders)
    full = [np.memmap(p, dtype=np.uint32, mode="r") if p.stat().st_size else np.zeros(0, np.uint32)
            for p in (work / "minhash" / "sigs" / "full" / f"{r:05d}.sig" for r in range(len(keys)))]
    n_hashes = next((len(f) // len(k) for f, k in zip(full, keys) if len(k)), 1)
    full = [f.reshape(-1, n_hashes) for f in full]
    similar: dict[tuple[int, int], set] = {}  # document -> the earlier documents similar to it
    for dup_file in sorted((work / "minhash" / "buckets").glob("*.dups")):
        raw = np.fromfile(dup_file, dtype="<u4").reshape(-1, 4).tolist()
        parent: dict = {}  # this band's groups: its pairs chain each group's members

        def find(x):
            while parent.get(x, x) != x:
                parent[x] = x = parent.get(parent[x], parent[x])
            return x
        for f1, d1, f2, d2 in raw:
            ra, rb = find((f1, d1)), find((f2, d2))
            if ra != rb:
                parent[rb] = ra
        groups: dict = {}
        for node in parent:
            groups.setdefault(find(node), []).append(node)
        for root, members in groups.items():
            members = sorted({root, *members} - {m for m in {root, *members} if drop[m[0]].get(m[1])},
                             key=lambda m: (int(order_of[m[0]][m[1]]), m))
            if len(members) < 2:
                continue
            sigs = np.stack([full[r][i] for r, i in members])
            for j in range(1, len(members)):
                agree = (sigs[:j] == sigs[j]).mean(axis=1) >= threshold
                if agree.any():
                    similar.setdefault(members[j], set()).update(members[i] for i in np.flatnonzero(agree))
    dropped = set()
    for node in sorted(similar, key=lambda m: (int(order_of[m[0]][m[1]]), m)):
        if any(other not in dropped for other in similar[node]):
            dropped.add(node)
            drop[node[0]][node[1]] = "near duplicate"


_ID_CACHE: dict = {}


def _doc_id(work: Path, rank: int, idx: int) -> str:
    """The id of candidate `idx` of task `rank` (read from its JSONL; only for removed documents)."""
    lines = _ID_CACHE.get((str(work), rank))
    if lines is None:
        offsets, pos = [], 0
        with open(work / "candidates" / f"{rank:05d}.jsonl", "rb") as f:
            for line in f:
                offsets.append(pos)
                pos += len(line)
        lines = _ID_CACHE[(str(work), rank)] = offsets
    with open(work / "candidates" / f"{rank:05d}.jsonl", "rb") as f:
        f.seek(lines[idx])
        return json.loads(f.readline())["id"]


# --------------------------------------------------------------------------------------------------------------
# running it
# --------------------------------------------------------------------------------------------------------------
def _quiet_datatrove() -> None:
    """datatrove logs every task's INFO lines to stderr; keep its per-task log files, show warnings only."""
    import sys

    import datatrove.executor.base as base
    from datatrove.utils.logging import logger
    if getattr(base.add_task_logger, "_codelm", False):
        return
    logger.remove()  # this process: the executors' summaries are INFO/SUCCESS lines
    logger.add(sys.stderr, level="WARNING")

    sinks: dict = {}  # task log file -> its loguru sink; the stderr sink stays (each `add` costs a few ms)

    def add_task_logger(logging_dir, rank, local_rank=0, node_rank=-1):
        logfile = logging_dir.open(f"logs/task_{rank:05d}.log", "w")
        sinks[id(logfile)] = logger.add(logfile, level="DEBUG")
        return logfile

    def close_task_logger(logfile):
        logger.complete()
        sink = sinks.pop(id(logfile), None)
        if sink is not None:
            logger.remove(sink)
        logfile.close()
    add_task_logger._codelm = True
    base.add_task_logger, base.close_task_logger = add_task_logger, close_task_logger


HASHES_PER_BAND = 12


def minhash_config(cfg):
    """LSH bands for the threshold: b bands of r = 12 hashes make (1/b)^(1/r) the similarity at which a pair is
    found half the time; b = (1/threshold)^r puts it at the threshold (0.8: 15 bands, 0.798)."""
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.utils.hashing import HashConfig
    bands = max(1, round((1 / cfg.near_dedup_threshold) ** HASHES_PER_BAND))
    return MinhashConfig(n_grams=5, num_buckets=bands, hashes_per_bucket=HASHES_PER_BAND, seed=1,
                         hash_config=HashConfig(precision=32, hash_fc="xxhash"))


def work_dir(cfg) -> Path:
    return Path(cfg.work_dir) if cfg.work_dir else Path(cfg.out).with_name(Path(cfg.out).name + ".work")


def check_work_dir(cfg, work: Path, fingerprint: dict) -> None:
    """A working directory made with other options is refused (its finished tasks would be wrong for these)."""
    marker = work / "options.json"
    if marker.is_file():
        try:
            old = json.loads(marker.read_text())
        except json.JSONDecodeError:
            old = None
        if old != fingerprint:
            changed = sorted(k for k in set(fingerprint) | set(old or {}) if (old or {}).get(k) != fingerprint.get(k))
            raise DataError(f"{work}: working directory of a run with other options ({', '.join(changed[:5])}); "
                            f"delete it, or pass another --work-dir")
    else:
        work.mkdir(parents=True, exist_ok=True)
        _atomic_json(marker, fingerprint)


def build_executors(cfg, work: Path, stages_before_dedup: list, decontam: bool):
    """The four executors (filter, buckets, cluster, shards) for cfg.executor."""
    mh = minhash_config(cfg)
    signer = CodeMinhashSignature(output_folder=str(work / "minhash" / "sigs"), config=mh)
    common = dict(work=work, doc_seconds=cfg.doc_seconds, progress_seconds=cfg.progress_seconds)
    filter_steps = [ReadSources(cfg, work)]
    for make, name in stages_before_dedup:
        filter_steps.append(CodeStage(make, name, phase="filter", **common))
    if decontam:
        filter_steps.append(CheckDecontamination(_load_decontaminator(work), work, cfg.doc_seconds))
    filter_steps.append(WriteCandidates(work))
    filter_steps.append(signer)
    bucket_steps = [MinhashDedupBuckets(input_folder=str(work / "minhash" / "sigs"),
                                        output_folder=str(work / "minhash" / "buckets"), config=mh)]
    cluster_steps = [Cluster(work, cfg.tasks, cfg.exact_dedup, cfg.near_dedup, cfg.near_dedup_threshold)]
    shard_steps = [ReadCandidates(work)]
    if decontam:
        shard_steps.append(ApplyDecontamination(work))
    shard_steps.append(TokenizeSplit(work, cfg.tokenizer, cfg.val_fraction, cfg.tasks == 1))
    runs = [("filter", filter_steps, cfg.tasks), ("buckets", bucket_steps, mh.num_buckets),
            ("cluster", cluster_steps, 1), ("shards", shard_steps, cfg.tasks)]
    return runs


class _load_decontaminator:
    """Loads the index built once per run (pickled in the working directory), in whichever process runs a task."""

    def __init__(self, work: Path):
        self.work = work

    def __call__(self):
        import pickle
        with open(self.work / "decontaminate.pkl", "rb") as f:
            return pickle.load(f)


class _FilterStage:
    """Makes a fresh per-document stage for each task (a stage keeps per-task state, e.g. the edu scores)."""

    def __init__(self, cfg, index: int):
        self.cfg, self.index = cfg, index

    def __call__(self):
        return filter_stages(self.cfg)[self.index]


def run(cfg, index_build=None) -> dict:
    """Run the whole pipeline for `cfg` and assemble the shard directory; returns its index. `index_build`: the
    decontamination index being built meanwhile (stages.IndexBuild), else it is built here."""
    from codelm.tokenizer import get_tokenizer
    _quiet_datatrove()
    tokenizer = get_tokenizer(cfg.tokenizer)  # fail early on a bad name
    t_start = time.perf_counter()
    work = work_dir(cfg)
    config = {k: v for k, v in vars(cfg).items() if k not in RUNTIME_ONLY}
    check_work_dir(cfg, work, {**config, "tasks": cfg.tasks, "work_layout": WORK_LAYOUT})
    stages = filter_stages(cfg)
    if cfg.decontaminate:
        pkl = work / "decontaminate.pkl"
        if not pkl.is_file():  # built once per run, loaded by every task
            import pickle
            data = index_build.result() if index_build else None
            tmp = pkl.with_name(f".{pkl.name}.tmp-{os.getpid()}")
            tmp.write_bytes(data or pickle.dumps(decontaminator(cfg)))
            tmp.replace(pkl)
    runs = build_executors(cfg, work, [(_FilterStage(cfg, i), s.name) for i, s in enumerate(stages)], cfg.decontaminate)
    if cfg.executor == "slurm":
        from codelm.data.executors import submit_slurm, write_slurm
        submit = write_slurm(cfg, runs, work, command_line(cfg))
        if cfg.dry_run:
            log.info("wrote the sbatch scripts and %s (not submitted)", submit)
        else:
            submit_slurm(submit)
        return {"slurm": str(submit), "submitted": not cfg.dry_run}
    timings = {}
    with _few_collections():
        for name, steps, tasks in runs:
            t0 = time.perf_counter()
            execute(cfg, name, steps, tasks, work)
            timings[name] = round(time.perf_counter() - t0, 3)
            log.info("%s: %d task(s) done in %.1fs", name, tasks, timings[name])
    manifest, files, stage_timings = assemble_manifest(cfg, work, config, [s.name for s in stages])
    timings = {"runs": timings, **stage_timings, "total_seconds": round(time.perf_counter() - t_start, 3)}
    from codelm.data.shards import assemble_shards
    out = assemble_shards(cfg.out, files, tokenizer, manifest, timings=timings)
    if not cfg.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return json.loads((Path(out) / "index.json").read_text())


GC_THRESHOLD = 10_000  # allocations between young-generation collections (Python's default: 700)


@contextmanager
def _few_collections():
    """While the runs work: what is alive before them (modules, the stages, the decontamination index, ~60k objects)
    is frozen out of the cyclic garbage collector, which otherwise walks all of it again and again while the edu
    score's `ast.parse` allocates millions of short-lived nodes (12% of a filter task's CPU on the stdlib; freezing
    before the tasks fork also keeps the collector from writing to the parent's pages). The per-document work makes
    no reference cycles worth collecting often (AST nodes have no parent links), so young collections are rarer too.
    Only speed changes: nothing here decides anything."""
    import gc
    threshold = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, *threshold[1:])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()


def command_line(cfg) -> list[str]:
    """The `codelm data prepare` command that reproduces cfg, less --executor and --dry-run (the Slurm assemble job
    adds `--executor local --dry-run false`)."""
    import sys
    out = [sys.executable, "-m", "codelm.cli", "data", "prepare"]
    for key, value in vars(cfg).items():
        if key in ("executor", "dry_run"):  # the caller says how this command runs
            continue
        out += [f"--{key.replace('_', '-')}", str(value).lower() if isinstance(value, bool) else str(value)]
    return out


def execute(cfg, name: str, steps: list, tasks: int, work: Path) -> None:
    """One datatrove run of `tasks` tasks; meanwhile, progress lines over all its tasks (the heavy runs only)."""
    from codelm.data.progress import RunProgress
    logging_dir = str(work / "logs" / name)
    every = cfg.progress_seconds if name in ("filter", "shards") else 0
    with RunProgress(name, work / "progress" / name, tasks, every):
        if cfg.executor == "local":
            workers = max(1, min(cfg.workers or os.cpu_count() or 1, tasks))
            local_executor(steps, tasks, workers, logging_dir).run()
        elif cfg.executor == "ray":
            from codelm.data.executors import run_ray
            run_ray(cfg, steps, tasks, logging_dir)
        else:
            raise DataError(f"executor {cfg.executor!r}: expected local, slurm or ray")
    missing = [r for r in range(tasks) if not (Path(logging_dir) / "completions" / f"{r:05d}").is_file()]
    if missing:
        raise DataError(f"{name}: task(s) {', '.join(map(str, missing[:10]))} did not finish (logs in "
                        f"{logging_dir}/logs); run the same command again to resume")


_FORKED_EXECUTOR = None  # the executor whose tasks the forked pool runs (inherited: nothing is pickled per task)


def _run_forked_task(rank: int):
    return _FORKED_EXECUTOR._run_for_rank(rank)


def local_executor(steps: list, tasks: int, workers: int, logging_dir: str):
    """datatrove's LocalPipelineExecutor (its tasks, completion markers, per-task logs and stats), less the
    `multiprocess.Manager` its run() starts: a server process per run, through which every task's start and end
    pass (about six round trips a task, each waiting on a third process for the two busy cores: 0.1-0.3 s a run on a
    loaded 2-core machine, for no work). Here the pool's workers are forked with the executor already in place, take
    the next unfinished rank as they become free, and a run of one task or one worker runs in this process."""
    from copy import deepcopy

    import multiprocess
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.utils.stats import PipelineStats

    class Executor(LocalPipelineExecutor):
        def run(self):
            global _FORKED_EXECUTOR
            self._launched = True
            ranks = self.get_incomplete_ranks(range(self.tasks))
            if not ranks:
                return PipelineStats()
            self.save_executor_as_json()
            if self.workers == 1 or len(ranks) == 1:
                pipeline, stats = self.pipeline, []
                for rank in ranks:  # a fresh copy of the steps per task, as datatrove does in-process
                    self.pipeline = deepcopy(pipeline)
                    stats.append(self._run_for_rank(rank))
                self.pipeline = pipeline
            else:
                _FORKED_EXECUTOR = self
                try:
                    with multiprocess.get_context("fork").Pool(min(self.workers, len(ranks))) as pool:
                        stats = list(pool.imap_unordered(_run_forked_task, ranks))
                finally:
                    _FORKED_EXECUTOR = None
            stats = sum(stats, start=PipelineStats())
            with self.logging_dir.open("stats.json", "wt") as f:
                stats.save_to_disk(f)
            return stats

    return Executor(pipeline=steps, tasks=tasks, workers=workers, logging_dir=logging_dir, start_method="fork")


def _read_all(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def assemble_manifest(cfg, work: Path, config: dict, filter_names: list[str]):
    """One manifest from every task's stats: the same for the same inputs and options, whatever the task count."""
    stats = work / "stats"
    reads = _read_all(stats / "read")
    rejects = sorted((tuple(r) for p in reads for r in p["rejects"]))
    read = merge_stage_stats([p["read"] for p in reads])
    if read["docs_in"] == 0:
        raise DataError(f"source {cfg.source!r}: no documents found" + (
            f" ({len(rejects)} skipped, e.g. {rejects[0][0]}: {rejects[0][1]})" if rejects else ""))
    stage_list, timings, extra = [], [], {}
    for name in filter_names:
        parts = _read_all(stats / "filter" / name)
        stage_list.append(merge_stage_stats([p["stage"] for p in parts]))
        if name == "edu_score":
            scores = [s for p in parts for s in p.get("scores", [])]
            extra["edu_scores"] = {"threshold": cfg.edu_threshold, "scorer": cfg.edu_scorer,
                                   "histogram": histogram(scores, 0.0, 1.0, 20)}
    stage_list += [merge_stage_stats([s]) for s in json.loads((stats / "cluster.json").read_text())["stages"]]
    for s in stage_list:
        if s["name"] == "near_dedup":
            s["seconds"] += sum(p["seconds"] for p in _read_all(stats / "filter_minhash"))
    if cfg.decontaminate:
        parts = _read_all(stats / "shards" / "decontaminate")
        stage_list.append(merge_stage_stats([p["stage"] for p in parts]))
        stage_list[-1]["seconds"] = sum(p["seconds"] for p in _read_all(stats / "filter_decontaminate"))
        import pickle
        with open(work / "decontaminate.pkl", "rb") as f:
            description = pickle.load(f).describe()
        description["dropped"] = [row for _, row in sorted((tuple(x) for p in parts for x in p["dropped"]),
                                                           key=lambda x: x[0])][:1000]
        extra["decontamination"] = description
    for s in stage_list:
        timings.append({"name": s["name"], "seconds": round(s["seconds"], 3),
                        "mb_per_s": round(s["bytes_in"] / 1e6 / max(s["seconds"], 1e-9), 2)})
        del s["seconds"]
    kept = stage_list[-1]["docs_out"] if stage_list else read["docs_out"]
    if not kept:
        raise DataError(f"source {cfg.source!r}: no usable documents remain after filtering ("
                        + ", ".join(f"{s['name']}: -{s['docs_in'] - s['docs_out']}" for s in stage_list) + ")")
    tok = [json.loads((stats / "tokenize" / f"{r:05d}.json").read_text()) for r in range(cfg.tasks)]
    files = {name: [(work / "tokens", {k: v for k, v in t["files"][name].items() if k != "ids"}) for t in tok]
             for name in ("train", "val")}
    n_docs = {name: sum(e["n_docs"] for _, e in files[name]) for name in files}
    if not n_docs["train"]:
        raise DataError(f"source {cfg.source!r}: too few documents to make a training split")
    manifest = {
        "source": cfg.source,
        "config": config,
        "unreadable": {"count": len(rejects), "examples": [list(r) for r in rejects[:20]],
                       "reasons": dict(sorted(Counter(reason_kind(why) for _, why in rejects).items()))},
        "input": {"docs": read["docs_in"], "bytes": read["bytes_in"]},
        "stages": stage_list,
        "decontaminated": bool(cfg.decontaminate),
        **extra,
        "tokenization": {"tokens": {n: sum(e["n_tokens"] for _, e in files[n]) for n in files},
                         "bytes": {n: sum(e["n_bytes"] for _, e in files[n]) for n in files}},
        "documents": n_docs,
        "doc_tokens": {"edges": [round(float(e), 4) for e in np.linspace(0, 6, 25)],
                       "counts": np.sum([t["doc_tokens"] for t in tok], axis=0).astype(int).tolist()},
        "val_dedup": "exact+near dedup over the whole corpus before the split" if cfg.near_dedup else (
            "exact dedup before the split" if cfg.exact_dedup else "none"),
        "val_ids": [i for _, i in sorted(tuple(x) for t in tok for x in t["files"]["val"]["ids"])][:1000],
    }
    read_t = {"name": "read", "seconds": round(read["seconds"], 3),
              "mb_per_s": round(read["bytes_in"] / 1e6 / max(read["seconds"], 1e-9), 2)}
    return manifest, {n: [f for f in files[n] if f[1]["n_docs"] or len(files[n]) == 1] or files[n][:1]
                      for n in files}, {"read": read_t, "stages": timings}

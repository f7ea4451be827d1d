"""Where documents come from.

The default corpus, present on every machine, is the Python standard library shipped with the interpreter, test
folders excluded (ARCHITECTURE.md): reproducible for a given Python version, no download. Other sources, named in
`DataConfig.source` (comma-separated to combine several):

    stdlib                      the interpreter's standard library (default)
    site-packages               installed packages' sources (opt-in: varies from machine to machine)
    path/to/dir                 every file with one of `extensions` under it, in sorted order
    file.jsonl[.gz]             one JSON object per line, the code in `text_field`
    file.parquet                a Parquet table, the code in `text_field` (read through `datasets`)
    hf:NAME[/CONFIG]            a Hugging Face dataset by name, streamed (`hf_split`, `text_field`, `max_docs`)

Bad input never stops a run: an unreadable or non-UTF-8 file, a malformed JSONL line or a row without text is skipped
and appended to `rejects` as (where, why), `where` naming the file and line. Trade-off: JSONL is read line by line with
the standard library rather than `datasets`' json builder, because that builder aborts the whole file at the first
malformed line and cannot say which line it was; Parquet and the hub go through `datasets`.
"""

from __future__ import annotations

import gzip
import heapq
import json
import os
import site
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from codelm.errors import DataError

# folders that hold tests or vendored data rather than library code
STDLIB_EXCLUDED_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
# folders that never hold source worth training on
MAX_FILE_BYTES = 64 * 2**20  # never read a bigger file (the size stage's bound is far lower by default)
ALWAYS_EXCLUDED_DIRS = {".git", ".hg", ".svn", "__pycache__", "node_modules", ".venv", ".tox", ".mypy_cache"}


@dataclass
class Document:
    id: str            # a stable name: path relative to the source root, or dataset name + row
    text: str
    source: str = ""   # which source produced it
    meta: dict = field(default_factory=dict)


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def iter_code_files(root: Path, extensions: tuple[str, ...] = (".py",),
                    excluded_dirs: set[str] = frozenset()) -> Iterator[Path]:
    """Files under root with the given extensions, in sorted (reproducible) order."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in excluded_dirs)
        for name in sorted(filenames):
            if name.endswith(extensions):
                yield Path(dirpath) / name


def read_text_file(path: Path, max_bytes: int = MAX_FILE_BYTES) -> tuple[str | None, str | None]:
    """(text, None) or (None, reason) — never raises for an unreadable, non-UTF-8 or enormous file."""
    try:
        size = path.stat().st_size
        if size > max_bytes:  # checked before reading: a stray multi-GB dump must not fill memory
            return None, f"too large to read ({size:,} bytes > {max_bytes:,})"
        data = path.read_bytes()
    except OSError as e:
        return None, f"unreadable: {e.strerror}"
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError as e:
        return None, f"not UTF-8 (byte {e.start})"


def directory_documents(root: Path, extensions: tuple[str, ...], excluded_dirs: set[str], source: str,
                        rejects: list | None = None) -> Iterator[Document]:
    for path in iter_code_files(root, extensions, excluded_dirs | ALWAYS_EXCLUDED_DIRS):
        text, why = read_text_file(path)
        if text is None:
            if rejects is not None:
                rejects.append((str(path), why))
            continue
        yield Document(id=str(path.relative_to(root)), text=text, source=source)


def stdlib_documents(rejects: list | None = None, extensions: tuple[str, ...] = (".py",)) -> Iterator[Document]:
    return directory_documents(stdlib_root(), extensions, STDLIB_EXCLUDED_DIRS, "stdlib", rejects)


def site_packages_documents(rejects: list | None = None,
                            extensions: tuple[str, ...] = (".py",)) -> Iterator[Document]:
    """Installed packages' sources (opt-in): the active environment's site-packages, tests excluded."""
    roots = sorted({Path(p) for p in site.getsitepackages() + [sysconfig.get_paths()["purelib"]] if Path(p).is_dir()})
    for root in roots:
        for doc in directory_documents(root, extensions, {"test", "tests"}, "site-packages", rejects):
            doc.id = f"site-packages/{doc.id}"
            yield doc


def jsonl_documents(path: Path, text_field: str, rejects: list | None = None) -> Iterator[Document]:
    """One document per line; a malformed line or a line without a string `text_field` is skipped, file:line named."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        fh = opener(path, "rb")
        lines = iter(fh)
    except OSError as e:
        raise DataError(f"{path}: cannot open ({e.strerror})") from None
    with fh:
        for line_number, raw in enumerate(lines, start=1):
            where = f"{path}:{line_number}"
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                _reject(rejects, where, f"malformed JSON ({getattr(e, 'msg', 'not UTF-8')})")
                continue
            text = obj.get(text_field) if isinstance(obj, dict) else None
            if not isinstance(text, str):
                _reject(rejects, where, f"no string field {text_field!r}")
                continue
            doc_id = obj.get("id") or obj.get("path") or obj.get("max_stars_repo_path") or f"line{line_number}"
            yield Document(id=f"{path.name}:{doc_id}", text=text, source=str(path))


def datasets_documents(ds, name: str, text_field: str, rejects: list | None = None,
                       max_docs: int = 0) -> Iterator[Document]:
    """Rows of a `datasets` (Iterable)Dataset; the id is the row's path column when it has one, else its number."""
    for i, row in enumerate(ds):
        if max_docs and i >= max_docs:
            break
        text = row.get(text_field)
        if not isinstance(text, str):
            _reject(rejects, f"{name}:row{i}", f"no string field {text_field!r} (columns: {', '.join(row)})")
            continue
        doc_id = row.get("path") or row.get("max_stars_repo_path") or row.get("id") or f"row{i}"
        yield Document(id=f"{name}:{i}:{doc_id}", text=text, source=name)


def parquet_documents(path: Path, text_field: str, rejects: list | None = None,
                      max_docs: int = 0) -> Iterator[Document]:
    from datasets import load_dataset
    try:
        ds = load_dataset("parquet", data_files=str(path), split="train", streaming=True)
        yield from datasets_documents(ds, path.name, text_field, rejects, max_docs)
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"{path}: cannot read as Parquet ({str(e).splitlines()[0]})") from None


def hub_documents(name: str, split: str, text_field: str, rejects: list | None = None,
                  max_docs: int = 0) -> Iterator[Document]:
    """A Hugging Face dataset streamed by name (`hf:bigcode/the-stack-smol/data/python` = name + data_dir).

    Streaming keeps a multi-terabyte dataset out of the disk cache; `max_docs` bounds how much of it is read. Not
    exercised offline (no hub access here), but `HF_HUB_OFFLINE=1` turns a missing cache into the DataError below.
    """
    from datasets import load_dataset
    parts = name.split("/")
    repo, data_dir = "/".join(parts[:2]), "/".join(parts[2:]) or None
    try:
        ds = load_dataset(repo, data_dir=data_dir, split=split, streaming=True)
    except Exception as e:  # the hub raises many types (connection, auth, not found); all mean "cannot load"
        raise DataError(f"hf:{name}: cannot load dataset ({type(e).__name__}: {str(e).splitlines()[0][:200]})") \
            from None
    yield from datasets_documents(ds, f"hf:{name}", text_field, rejects, max_docs)


def documents_from(source: str, rejects: list | None = None, extensions: tuple[str, ...] = (".py",),
                   text_field: str = "content", hf_split: str = "train", max_docs: int = 0) -> Iterator[Document]:
    """Documents from one or more comma-separated sources (see the module docstring), in a reproducible order."""
    names = [s.strip() for s in source.split(",") if s.strip()]
    if not names:
        raise DataError("no source given (--source)")
    for name in names:
        yield from _one_source(name, rejects, extensions, text_field, hf_split, max_docs)


def _one_source(name, rejects, extensions, text_field, hf_split, max_docs) -> Iterator[Document]:
    if name == "stdlib":
        return stdlib_documents(rejects, extensions)
    if name == "site-packages":
        return site_packages_documents(rejects, extensions)
    if name.startswith("hf:"):
        return hub_documents(name[3:], hf_split, text_field, rejects, max_docs)
    path = Path(name).expanduser()
    if path.is_dir():
        return directory_documents(path, extensions, set(), str(path), rejects)
    if path.is_file() and path.name.endswith((".jsonl", ".jsonl.gz", ".json", ".ndjson")):
        return jsonl_documents(path, text_field, rejects)
    if path.is_file() and path.suffix == ".parquet":
        return parquet_documents(path, text_field, rejects, max_docs)
    if path.is_file():
        raise DataError(f"source {name}: unsupported file type (expected .jsonl[.gz] or .parquet, or a directory)")
    raise DataError(f"source {name}: no such file or directory (or use 'stdlib', 'site-packages', 'hf:NAME')")


def _reject(rejects: list | None, where: str, why: str) -> None:
    if rejects is not None:
        rejects.append((where, why))


# ---------------------------------------------------------------------------------------------------------------
# one task's share, for the datatrove pipeline (pipeline.py)
# ---------------------------------------------------------------------------------------------------------------
ORDER_SHIFT = 1 << 44  # a document's order: source number * 2^44 + its position in that source


def task_documents(cfg, rank: int, world: int, rejects: list | None = None,
                   share: dict | None = None) -> Iterator[tuple[int, Document]]:
    """(order, document) for task `rank` of `world`: files of a directory source dealt by size (see
    deal_files), a JSONL file split into byte ranges at line starts, a Parquet file by row groups; a gzipped JSONL
    file and a hub stream cannot be split and are read by task 0. The order is the document's position in the
    sources, the same whatever the number of tasks (the pipeline's tie-breaker, see pipeline.py). `share`, when
    given, gets "bytes": the size of this task's files, or None where a source's size is not known up front."""
    share = {} if share is None else share
    share["bytes"] = 0
    extensions = tuple(e.strip() for e in cfg.extensions.split(",") if e.strip())
    names = [s.strip() for s in cfg.source.split(",") if s.strip()]
    if not names:
        raise DataError("no source given (--source)")
    for number, name in enumerate(names):
        base = number * ORDER_SHIFT
        path = Path(name).expanduser()
        if name in ("stdlib", "site-packages") or path.is_dir():
            files = list(_source_files(name, extensions))
            owner = deal_files([f[1] for f in files], world, max(1, cfg.max_bytes))
            mine = np.flatnonzero(owner == rank).tolist()
            if share["bytes"] is not None:
                share["bytes"] += sum(_size(files[i][1]) for i in mine)
            for i in mine:
                root, file, prefix, label = files[i]
                text, why = read_text_file(file)
                if text is None:
                    _reject(rejects, str(file), why)
                    continue
                yield base + i, Document(id=prefix + str(file.relative_to(root)), text=text, source=label)
            continue
        share["bytes"] = None  # JSONL/Parquet/hub: documents' sizes are not known before reading them
        if path.is_file() and path.name.endswith((".jsonl", ".json", ".ndjson")):
            yield from ((base + o, d) for o, d in jsonl_range(path, cfg.text_field, rank, world, rejects))
        elif path.is_file() and path.suffix == ".parquet":
            yield from ((base + o, d) for o, d in parquet_row_groups(path, cfg.text_field, rank, world, rejects,
                                                                        cfg.max_docs))
        elif rank == 0:  # gzipped JSONL, hf:NAME, or an error the one-task reader words best
            one = _one_source(name, rejects, extensions, cfg.text_field, cfg.hf_split, cfg.max_docs)
            yield from ((base + i, d) for i, d in enumerate(one))
        else:
            _one_source(name, None, extensions, cfg.text_field, cfg.hf_split, cfg.max_docs)  # same errors


FILE_COST_BYTES = 4096  # what a file costs beyond its bytes (opening, per-document work), in bytes' worth
# what a file weighs at most: beyond this size, bytes say little about the work (the largest files are as often data
# the quality stage rejects after one look — pydoc_data/topics.py, 757 kB, 2 ms — as code); weighed in full, such a
# file left the stdlib's two tasks 3.5 and 4.2 CPU seconds of work, at 128 kB 3.9 and 3.8 (per-file costs measured,
# the deal replayed; installed packages' sources: within 0.5% either way)
FILE_WEIGHT_BYTES = 128 * 1024


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def deal_files(files: list[Path], world: int, cap: int = MAX_FILE_BYTES) -> np.ndarray:
    """The task of each file: in sorted order, each file goes to the task with the fewest bytes so far (ties: the
    lowest rank), so tasks get equal bytes give or take one file (dealing by count can leave one task with most
    of the corpus' large files, and the other core idle). A file weighs at most `cap` bytes (the size stage drops
    bigger ones at once) and at most FILE_WEIGHT_BYTES.
    Depends only on the list and the sizes, the same in every task."""
    owner = np.zeros(len(files), dtype=np.int64)
    if world == 1:
        return owner
    load = [(0, r) for r in range(world)]  # a heap of (bytes so far, rank)
    for i, f in enumerate(files):
        size = min(_size(f), cap, FILE_WEIGHT_BYTES)
        cost, r = heapq.heappop(load)
        owner[i] = r
        heapq.heappush(load, (cost + size + FILE_COST_BYTES, r))
    return owner


def _source_files(name: str, extensions: tuple[str, ...]) -> Iterator[tuple[Path, Path, str, str]]:
    """(root, file, id prefix, source label) of every file a directory-like source reads, in sorted order."""
    if name == "stdlib":
        root = stdlib_root()
        for f in iter_code_files(root, extensions, STDLIB_EXCLUDED_DIRS | ALWAYS_EXCLUDED_DIRS):
            yield root, f, "", "stdlib"
    elif name == "site-packages":
        roots = sorted({Path(p) for p in site.getsitepackages() + [sysconfig.get_paths()["purelib"]]
                        if Path(p).is_dir()})
        for root in roots:
            for f in iter_code_files(root, extensions, {"test", "tests"} | ALWAYS_EXCLUDED_DIRS):
                yield root, f, "site-packages/", "site-packages"
    else:
        root = Path(name).expanduser()
        for f in iter_code_files(root, extensions, ALWAYS_EXCLUDED_DIRS):
            yield root, f, "", str(root)


def jsonl_range(path: Path, text_field: str, rank: int, world: int,
                rejects: list | None = None) -> Iterator[tuple[int, Document]]:
    """The lines of a JSONL file that start in this task's byte range [size*rank/world, size*(rank+1)/world);
    (byte offset, document). Line numbers for rejects come from counting the newlines before the range."""
    size = path.stat().st_size
    start, end = size * rank // world, size * (rank + 1) // world
    try:
        fh = open(path, "rb")
    except OSError as e:
        raise DataError(f"{path}: cannot open ({e.strerror})") from None
    with fh:
        line_number = 1
        if start:
            fh.seek(start - 1)
            if fh.read(1) != b"\n":
                fh.readline()  # a line that started before the range belongs to the task before
            pos = fh.tell()
            fh.seek(0)
            remaining = pos
            while remaining:
                chunk = fh.read(min(remaining, 1 << 24))
                line_number += chunk.count(b"\n")
                remaining -= len(chunk)
        pos = fh.tell()
        while pos < end:
            raw = fh.readline()
            if not raw:
                break
            where = f"{path}:{line_number}"
            doc = _jsonl_document(raw, path, text_field, line_number, where, rejects)
            if doc is not None:
                yield pos, doc
            pos += len(raw)
            line_number += 1


def _jsonl_document(raw: bytes, path: Path, text_field: str, line_number: int, where: str,
                    rejects: list | None) -> Document | None:
    if not raw.strip():
        return None
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        _reject(rejects, where, f"malformed JSON ({getattr(e, 'msg', 'not UTF-8')})")
        return None
    text = obj.get(text_field) if isinstance(obj, dict) else None
    if not isinstance(text, str):
        _reject(rejects, where, f"no string field {text_field!r}")
        return None
    doc_id = obj.get("id") or obj.get("path") or obj.get("max_stars_repo_path") or f"line{line_number}"
    return Document(id=f"{path.name}:{doc_id}", text=text, source=str(path))


def parquet_row_groups(path: Path, text_field: str, rank: int, world: int, rejects: list | None = None,
                       max_docs: int = 0) -> Iterator[tuple[int, Document]]:
    """Row groups rank, rank + world, ... of a Parquet file; (row number, document), ids as `datasets_documents`."""
    import pyarrow.parquet as pq
    try:
        pf = pq.ParquetFile(path)
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"{path}: cannot read as Parquet ({str(e).splitlines()[0]})") from None
    meta = pf.metadata
    first_rows = np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
    for g in range(rank, meta.num_row_groups, world):
        if max_docs and first_rows[g] >= max_docs:
            break
        table = pf.read_row_group(g)
        for j, row in enumerate(table.to_pylist()):
            i = int(first_rows[g]) + j
            if max_docs and i >= max_docs:
                break
            text = row.get(text_field)
            if not isinstance(text, str):
                _reject(rejects, f"{path.name}:row{i}", f"no string field {text_field!r} (columns: {', '.join(row)})")
                continue
            doc_id = row.get("path") or row.get("max_stars_repo_path") or row.get("id") or f"row{i}"
            yield i, Document(id=f"{path.name}:{i}:{doc_id}", text=text, source=path.name)

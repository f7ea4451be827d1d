"""Where documents come from.

The default corpus, present on every machine, is the Python standard library shipped with the interpreter, test
folders excluded (DESIGN.md, Data): reproducible for a given Python version, no download. Other sources, named in
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
import json
import os
import site
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

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

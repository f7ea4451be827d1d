"""The benchmark files codelm ships (MBPP, HumanEval-infilling, HumanEval+/MBPP+; see README.md here), and where a
benchmark file is looked up.

It lives under codelm, not evals, because decontamination (codelm/data) needs the same files and codelm never
imports evals; evals reaches it through evals/data.py.

A file `<relative>` (e.g. "mbpp/mbpp.jsonl") is looked up, in order, under
  1. the directory given with --data-dir,
  2. $CODELM_DATA_DIR,
  3. this package (the default: always there, so a clone with no network and no data folder works),
each as `<relative>` or `<relative>.gz`. A directory that does not hold the file is passed over, so an override only
overrides what it holds.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
ENV_VAR = "CODELM_DATA_DIR"


def candidates(data_dir: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
    """The directories to try, in order, each with a label saying where it came from."""
    out = []
    if data_dir:
        out.append(("--data-dir", Path(data_dir)))
    if os.environ.get(ENV_VAR):
        out.append((f"${ENV_VAR}", Path(os.environ[ENV_VAR])))
    out.append(("packaged with codelm", PACKAGE_DIR))
    return out


def find(relative: str, data_dir: str | os.PathLike | None = None) -> tuple[Path | None, list[str]]:
    """The first existing `<candidate>/<relative>` (or its .gz), and the places tried before it (for messages)."""
    names = [relative] if relative.endswith(".gz") else [relative, relative + ".gz"]
    tried = []
    for label, directory in candidates(data_dir):
        for name in names:
            if (directory / name).is_file():
                return directory / name, tried
        tried.append(f"{directory / relative} ({label})")
    return None, tried


def open_text(path: str | os.PathLike):
    """A text file object over path, decompressing when the name ends in .gz."""
    return gzip.open(path, "rt", encoding="utf-8") if str(path).endswith(".gz") else open(path, encoding="utf-8")


def content_sha256(path: str | os.PathLike) -> str:
    """sha256 of the file's decompressed bytes: the packaged .gz and an uncompressed copy of it hash the same."""
    stat = os.stat(path)
    return _content_sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _content_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe(path: str | os.PathLike) -> dict:
    """What a report records about a data file it read: where, whether it is the packaged copy, and its hash."""
    path = Path(path)
    packaged = path.resolve().is_relative_to(PACKAGE_DIR)
    where = f"codelm/benchdata/{path.resolve().relative_to(PACKAGE_DIR)}" if packaged else str(path)
    return {"path": where, "packaged": packaged,
            "sha256": content_sha256(path)}


def packaged_hashes() -> dict[str, str]:
    """CONTENT_SHA256: the recorded content hash of each packaged file, by relative path."""
    text = (PACKAGE_DIR / "CONTENT_SHA256").read_text()
    return {name: digest for digest, name in (line.split() for line in text.splitlines() if line.strip())}

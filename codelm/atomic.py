"""Atomic writes: a reader (or a resumed run after a crash) sees the old file or directory or the new one, never half.

    atomic_write_text(path, text)      a small file: config.json, summary.json, a JSONL written in one go
    with atomic_path(path) as tmp:     a file another library writes by name (a PNG, a download)
    with atomic_directory(path) as tmp:  a directory of files (a checkpoint, shards, a Hugging Face export)

Each writes beside its destination (same filesystem, so the final rename is atomic), fsyncs what it wrote, gives files
the permissions an ordinary `open()` would (temp files are 0600; a checkpoint served from a mount must be readable
by another user) and removes the temp on failure. Light on purpose: no torch, nothing beyond the standard library.
The sandbox keeps no copy: it writes no outputs that must survive a crash.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path


def default_file_mode() -> int:
    """What open() would give a new file under the current umask (temp files and some writers use 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def fsync_path(path: str | os.PathLike) -> None:
    """fsync a file or a directory (a directory's fsync makes the names in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unique_name(dest: Path, kind: str) -> Path:
    return dest.parent / f".{kind}-{dest.name}-{os.getpid()}-{time.monotonic_ns()}"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temp path beside `path`; after the block, the file written there becomes `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{os.getpid()}-{time.monotonic_ns()}-{path.name}"  # the suffix last: writers read it
    try:
        yield tmp
        os.chmod(tmp, default_file_mode())
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write `text` to `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding=encoding) as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def replace_directory(tmp: Path, dest: Path) -> None:
    """Swap a fully written (and fsync'd) temp directory in for `dest`. Readers see the old or the new directory:
    an existing `dest` is first renamed aside, then removed once the new one is in place."""
    if dest.exists():
        old = _unique_name(dest, "old")
        os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dest)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike):
    """Yield an empty temp directory beside `path`; after the block, its files are given ordinary permissions and
    fsync'd, and it replaces `path` (an existing one included)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _unique_name(path, "tmp")
    tmp.mkdir()
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                os.chmod(f, default_file_mode())  # safetensors and mkstemp write 0600
                fsync_path(f)
        fsync_path(tmp)
        replace_directory(tmp, path)
        fsync_path(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

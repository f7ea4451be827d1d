"""HumanEval: the canonical solutions score 164/164, empty and wrong completions score 0."""

import json

import pytest

from evals import humaneval
from evals.runner import evaluate_samples


@pytest.fixture(scope="module")
def benchmark():
    return humaneval.load()


def test_the_program_is_human_evals(benchmark):
    problem = benchmark.problems["HumanEval/0"]
    program = benchmark.program(problem, "    return True\n")
    assert program == problem["prompt"] + "    return True\n" + "\n" + problem["test"] + "\n" + "check(has_close_elements)"


def test_stop_sequences_are_the_codex_papers(benchmark):
    assert benchmark.stop == ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]
    assert benchmark.postprocess("    return 1\n\ndef g():\n    pass") == "    return 1\n"
    assert benchmark.postprocess("    x = 1\n    # fine, indented\n    return x\n# top level") == \
        "    x = 1\n    # fine, indented\n    return x"


def test_canonical_solutions_all_pass(benchmark, samples_file, tmp_path):
    path = samples_file([{"task_id": t, "completion": p["canonical_solution"]} for t, p in benchmark.problems.items()])
    summary = evaluate_samples(benchmark, path, tmp_path / "out")
    assert summary["pass@1"] == 1.0
    assert summary["counts"]["passed"] == 164
    results = [json.loads(line) for line in open(tmp_path / "out" / "results.jsonl")]
    assert len(results) == 164 and all(r["result"] == "passed" for r in results)


def test_empty_and_wrong_completions_score_zero(benchmark, samples_file, tmp_path):
    path = samples_file([{"task_id": t, "completion": c} for t in benchmark.problems for c in ("", "    return None\n")])
    summary = evaluate_samples(benchmark, path, tmp_path / "out")
    assert summary["pass@1"] == 0.0
    assert summary["counts"]["samples"] == 328 and summary["counts"]["passed"] == 0


@pytest.mark.parametrize("completion", ["    raise NotImplementedError\n", "    return (\n"])
def test_crashing_completions_score_zero(benchmark, samples_file, tmp_path, completion):
    path = samples_file([{"task_id": t, "completion": completion} for t in benchmark.problems])
    summary = evaluate_samples(benchmark, path, tmp_path / "out", limit=40)
    assert summary["pass@1"] == 0.0 and summary["counts"]["failed"] == 40

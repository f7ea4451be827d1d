"""HumanEval+ and MBPP+ (`--plus`): canonical solutions pass, subtly wrong ones fail on the extra inputs, and the
verdicts agree with evalplus' own evaluator run on the same samples (when the evalplus package is installed)."""

import gzip
import json
import os
import subprocess
import sys

import pytest

from evals import evalplus
from evals.cli import main

HE_TASKS = ["HumanEval/0", "HumanEval/2", "HumanEval/4", "HumanEval/13", "HumanEval/32"]
MBPP_TASKS = ["Mbpp/2", "Mbpp/3", "Mbpp/17", "Mbpp/126", "Mbpp/793"]

# Completions for HumanEval+ with known fates. has_close_elements with <= instead of < passes HumanEval's base tests
# but not the plus inputs (distance exactly equal to the threshold).
HE_SAMPLES = [
    ("HumanEval/0", "    return any(abs(a - b) <= threshold for i, a in enumerate(numbers)"
                    " for b in numbers[i + 1:])\n"),
    ("HumanEval/2", "    return number % 1.0\n"),
    ("HumanEval/2", "    return number - int(number) + 1e-3\n"),  # wrong beyond atol
    ("HumanEval/4", "    raise ValueError('no')\n"),
    ("HumanEval/13", "    while b:\n        a, b = b, a % b\n    return a\n"),
    ("HumanEval/13", "    return 1\n"),
    ("HumanEval/32", "    return 0.0\n"),  # find_zero: judged by the special oracle |poly(x)| <= atol
]
MBPP_SAMPLES = [
    ("Mbpp/2", "def similar_elements(a, b):\n    return tuple(sorted(set(a) & set(b), reverse=True))\n"),  # set eq
    ("Mbpp/3", "def is_not_prime(n):\n    return n > 1 and any(n % i == 0 for i in range(2, n))\n"),
    ("Mbpp/17", "def square_perimeter(a):\n    return 4 * a\n"),
    ("Mbpp/126", "def sum(a, b):\n    return 0\n"),  # shadows the builtin: the checker must not care
    ("Mbpp/793", "def last(arr, x):\n    return len(arr) - 1 - arr[::-1].index(x)\n"),
]


def _rows(dataset, task_ids):
    path = evalplus.find_data_file(dataset)
    wanted = set(task_ids)
    return [row for _, row in evalplus.read_jsonl(path) if row["task_id"] in wanted]


def _write_jsonl(path, rows):
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def _score(tmp_path, benchmark, samples, *extra):
    samples_path = _write_jsonl(tmp_path / f"{benchmark}_samples.jsonl",
                                [{"task_id": t, "completion": c} for t, c in samples])
    out = tmp_path / f"{benchmark}_out"
    assert main(["eval", benchmark, "--plus", "--samples", str(samples_path), "--output", str(out),
                 "--workers", "2", *extra]) == 0
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    results.sort(key=lambda r: (r["task_id"], r["completion_id"]))
    return samples_path, results, json.loads((out / "summary.json").read_text())


def test_canonical_solutions_pass(tmp_path):
    samples = [(row["task_id"], row["canonical_solution"]) for row in _rows("humaneval", HE_TASKS)]
    samples += [(row["task_id"], row["canonical_solution"]) for row in _rows("mbpp", MBPP_TASKS)]
    _, _, summary = _score(tmp_path, "humaneval", [s for s in samples if s[0].startswith("Human")],
                           "--tasks", ",".join(HE_TASKS))
    assert summary["pass@1"] == 1.0 and summary["benchmark"] == "humaneval+"
    _, _, summary = _score(tmp_path, "mbpp", [s for s in samples if s[0].startswith("Mbpp")],
                           "--tasks", ",".join(MBPP_TASKS))
    assert summary["pass@1"] == 1.0 and summary["counts"]["tasks"] == len(MBPP_TASKS)


def test_a_solution_wrong_only_on_plus_inputs_fails_and_counts_as_base_pass(tmp_path):
    _, results, summary = _score(tmp_path, "humaneval", HE_SAMPLES[:1], "--tasks", "HumanEval/0")
    assert not results[0]["passed"]
    assert "plus input" in results[0]["result"]
    assert summary["base_pass_rate"] == 1.0 and summary["pass@1"] == 0.0


def test_mbpp_plus_task_set_and_three_shot_drops_the_worked_examples():
    assert len(evalplus.load_mbpp_plus().problems) == 378
    three_shot = evalplus.load_mbpp_plus(prompt_format="3shot")
    assert len(three_shot.problems) == 375
    assert not {"Mbpp/2", "Mbpp/3", "Mbpp/4"} & set(three_shot.problems)
    prompt = three_shot.prompt(three_shot.problems["Mbpp/6"])
    assert prompt.count("[BEGIN]") == 4 and prompt.endswith("[BEGIN]\n")


def _evalplus_verdicts(tmp_path, dataset, samples):
    """Run evalplus' own evaluator in a subprocess on a data file holding just these tasks."""
    pytest.importorskip("evalplus")
    task_ids = sorted({t for t, _ in samples})
    data = tmp_path / f"{dataset}_subset.jsonl.gz"
    with gzip.open(data, "wt") as f:
        for row in _rows(dataset, task_ids):
            f.write(json.dumps(row) + "\n")
    samples_path = _write_jsonl(tmp_path / f"{dataset}_evalplus_samples.jsonl",
                                [{"task_id": t, "completion": c} for t, c in samples])
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"),
               **{"HUMANEVAL_OVERRIDE_PATH" if dataset == "humaneval" else "MBPP_OVERRIDE_PATH": str(data)})
    subprocess.run([sys.executable, "-m", "evalplus.evaluate", "--dataset", dataset, "--samples", str(samples_path),
                    "--parallel", "2"], env=env, check=True, capture_output=True, timeout=600)
    report = json.loads((tmp_path / f"{dataset}_evalplus_samples_eval_results.json").read_text())
    verdicts = []
    for task_id in task_ids:
        for r in report["eval"][task_id]:
            verdicts.append((task_id, r["base_status"] == "pass" and r["plus_status"] == "pass"))
    return verdicts


@pytest.mark.slow
@pytest.mark.parametrize("dataset,samples", [("humaneval", HE_SAMPLES), ("mbpp", MBPP_SAMPLES)])
def test_verdicts_agree_with_evalplus(tmp_path, dataset, samples):
    expected = _evalplus_verdicts(tmp_path, dataset, samples)
    _, results, _ = _score(tmp_path, dataset, samples, "--tasks", ",".join(sorted({t for t, _ in samples})))
    ours = [(r["task_id"], r["passed"]) for r in results]
    assert ours == expected
    assert any(passed for _, passed in ours) and not all(passed for _, passed in ours)

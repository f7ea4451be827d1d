"""HumanEval-X: canonical solutions pass, wrong ones fail (mutations, early exits, JavaScript's console.assert), Go
imports only what is used, infilling tasks per language, the CLI with sample files and resume.

A fixed sample of tasks per language runs by default; the whole sweep (every canonical solution, and a mutant of each)
is `slow`. Languages whose toolchain is missing skip with the reason (.ci/lang_setup.sh installs them).
"""
import json
import os
import subprocess
import sys
import threading

import pytest

from evals import humaneval_x as hx
from evals.data import find_local_file
from evals.execution import run_programs
from sandbox import toolchains

SAMPLE = ["0", "13", "53"]  # small problems, fixed: has_close_elements, greatest_common_divisor, add
EARLY_EXIT = {"cpp": "    exit(0);\n", "java": "        System.exit(0);\n", "js": "  process.exit(0);\n",
              "go": "    os.Exit(0)\n", "rust": "    std::process::exit(0);\n"}
# Upstream defects (the canonical solution itself is wrong, or needs what Debian lacks): see the report.
# Go/95 is flaky: its canonical solution depends on Go's randomized map order (~1 run in 12 fails). CPP/23 passes
# anything that compiles: its test's strlen("...") is the C library's strlen(const char *), never the solution's.
KNOWN_BAD = {"JavaScript/112", "JavaScript/155", "JavaScript/162", "Go/95", "Rust/50"}

if find_local_file("humaneval-x/humaneval_cpp.jsonl.gz")[0] is None:
    pytest.skip("HumanEval-X data not found (neither packaged nor in $CODELM_DATA_DIR)",
                allow_module_level=True)


@pytest.fixture(scope="module", params=hx.LANGUAGES)
def bench(request):
    why = toolchains.missing(request.param)
    if why:
        pytest.skip(why)
    return hx.load(request.param)


def task(bench, number):
    return bench.problems[f"{hx.TASK_PREFIX[bench.language]}/{number}"]


def verdicts(bench, pairs, workers=2, backend="local"):
    return run_programs([bench.runnable(p, c) for p, c in pairs], cpu_s=bench.cpu_s, workers=workers, backend=backend)


def mutate(solution: str) -> str | None:
    """A wrong solution: the first comparison or arithmetic operator flipped; failing that the first boolean literal,
    then the first operator without spaces, 0 made 1, or the returned value changed (None: nothing to change).
    Operators first, and only with spaces around them, so that templates and generics (vector<int>) stay intact and
    few mutants are equivalent (a counter initialised to 1 instead of 0 is often overwritten)."""
    groups = [[(" < ", " >= "), (" > ", " <= "), (" <= ", " > "), (" >= ", " < "), (" == ", " != "),
               (" != ", " == "), (" + ", " - "), (" - ", " + "), (" * ", " + ")],
              [("true", "false"), ("false", "true")],
              [("<", ">="), ("+", "-"), ("-", "+"), (" 0", " 1"), ("(0", "(1"), ("return ", "return 1 + ")]]
    for group in groups:
        found = [(i, old, new) for old, new in group if (i := solution.find(old)) != -1]
        if found:
            i, old, new = min(found)
            return solution[:i] + new + solution[i + len(old):]
    return None


def early_exit(bench, problem):
    """The canonical solution preceded by an exit with status 0 (Go: os imported through the problem's imports)."""
    if bench.language == "go":
        problem = {**problem, "import": 'import (\n    "os"\n)\n'}
    return problem, EARLY_EXIT[bench.language] + bench.reference(problem)


def test_canonical_solutions_of_the_sample_pass(bench):
    problems = [task(bench, n) for n in SAMPLE]
    results = verdicts(bench, [(p, bench.reference(p)) for p in problems])
    assert [v.result for v in results] == ["passed"] * len(problems)


def test_mutated_solutions_and_early_exits_fail(bench):
    problems = [task(bench, n) for n in SAMPLE]
    # Task 0's first mutant (a loop starting at 1) is equivalent: the sweep counts such cases, this sample avoids it.
    pairs = [(p, mutate(bench.reference(p))) for p in problems[1:]] + [early_exit(bench, p) for p in problems]
    results = verdicts(bench, pairs)
    assert not any(v.passed for v in results), [(p["task_id"], v.result) for (p, _), v in zip(pairs, results)]


@pytest.mark.docker
@pytest.mark.parametrize("language", hx.LANGUAGES)
def test_the_docker_backend_gives_the_same_verdicts(language):
    """The sample's canonical solutions pass and their early exits fail in the sandbox-lang image too (its own
    toolchains and warm artifacts), with no toolchain needed on this host."""
    from sandbox import SandboxUnavailable, docker_backend
    try:
        docker_backend.client(docker_backend.LANG_IMAGE)
    except SandboxUnavailable as e:
        pytest.skip(str(e))
    bench = hx.load(language)
    problems = [task(bench, n) for n in SAMPLE]
    pairs = [(p, bench.reference(p)) for p in problems] + [early_exit(bench, p) for p in problems[:1]]
    results = verdicts(bench, pairs, backend="docker")
    assert [v.passed for v in results] == [True] * len(problems) + [False], [v.result for v in results]


def test_a_wrong_javascript_answer_fails_although_console_assert_only_prints():
    if toolchains.missing("js"):
        pytest.skip(toolchains.missing("js"))
    bench = hx.load("js")
    [v] = verdicts(bench, [(task(bench, 0), "  return true\n}\n")])
    assert not v.passed and "Assertion failed" in v.result


def test_a_compile_error_is_reported_as_upstream_says():
    if toolchains.missing("cpp"):
        pytest.skip(toolchains.missing("cpp"))
    bench = hx.load("cpp")
    [v] = verdicts(bench, [(task(bench, 0), "  return undeclared;\n}\n")])
    assert v.result == "failed: compilation error"


def test_go_imports_only_the_packages_the_code_uses():
    bench = hx.load("go")
    problem = task(bench, 0)  # its prompt imports "math", which the canonical solution uses
    source = bench.program(problem, bench.reference(problem))
    assert '"math"' in source and '"strings"' not in source
    source = bench.program(problem, "    return strings.Contains(\"a\", \"b\")\n}\n")
    assert '"strings"' in source and '"math"' not in source


def test_postprocess_stops_at_the_closing_brace():
    bench = hx.load("cpp")
    assert bench.postprocess("    return 1;\n}\nint main() {}\n") == "    return 1;\n}\n"
    assert bench.postprocess("    return 1;") == "    return 1;"  # no stop: scored as given


def test_rust_prompt_has_the_signature():
    bench = hx.load("rust")
    problem = task(bench, 0)
    assert bench.prompt(problem).rstrip().endswith("-> bool{")


def test_infilling_tasks_are_the_solution_lines_and_score_both_ways(bench):
    infill = hx.HumanEvalXInfilling(bench, mode="fim")
    problem = task(bench, 53)
    tasks = [t for t in infill.problems.values() if t["problem_id"] == problem["task_id"]]
    body = [line for line in problem["canonical_solution"].splitlines() if line.strip()]
    assert 1 <= len(tasks) < len(body)  # every body line but the closing brace(s)
    for t in tasks:
        assert t["prompt"] == bench.prompt(problem) + t["solution_prefix"]
        assert t["solution_prefix"] + t["canonical_solution"] + t["suffix"] == problem["canonical_solution"]
    t = tasks[0]
    assert infill.sample_fields(t, t["canonical_solution"]) == {"exact_match": True}
    results = run_programs([infill.runnable(t, t["canonical_solution"]), infill.runnable(t, "\n")],
                           cpu_s=infill.cpu_s, workers=2)
    assert [v.passed for v in results] == [True, False]


def test_cli_scores_a_sample_file_and_resumes(tmp_path):
    if toolchains.missing("js"):
        pytest.skip(toolchains.missing("js"))
    bench = hx.load("js")
    samples = tmp_path / "samples.jsonl"
    rows = [{"task_id": "JavaScript/0", "completion": bench.reference(task(bench, 0))},
            {"task_id": "JavaScript/0", "completion": "  return true\n}\n"},
            {"task_id": "JavaScript/162", "completion": bench.reference(task(bench, 162))}]
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "evals.cli", "eval", "humaneval-x", "--language", "js", "--samples", str(samples),
           "--tasks", "JavaScript/0,JavaScript/162", "--output", str(out), "-k", "1"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted((r["task_id"], r["passed"]) for r in results) == [
        ("JavaScript/0", False), ("JavaScript/0", True), ("JavaScript/162", False)]
    assert any(r["result"].startswith("failed: unavailable: ") for r in results)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pass@1"] == pytest.approx(0.25)  # (1/2 + 0/1) / 2 tasks: the unavailable one counts
    assert "pass@1_ci95" in summary and summary["unavailable_tasks"] == {"JavaScript/162": hx.UNAVAILABLE[
        "JavaScript/162"]}
    mtime = (out / "results.jsonl").stat().st_mtime_ns
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and (out / "results.jsonl").stat().st_mtime_ns == mtime  # nothing re-run


def test_unknown_language_is_a_clear_error():
    result = subprocess.run([sys.executable, "-m", "evals.cli", "eval", "humaneval-x", "--language", "cobol",
                             "--samples", "x.jsonl"], capture_output=True, text=True)
    assert result.returncode == 2 and "invalid choice" in result.stderr


@pytest.mark.slow
def test_sweep_canonical_pass_mutants_fail_and_verdicts_hold_under_oversubscription(bench):
    """Canonical solutions pass but the known upstream defects; at least 95% of mutants fail; the same verdicts with
    three programs per core and CPU hogs beside them. Every 8th task (21 per language, a few minutes in all);
    CODELM_HUMANEVAL_X_FULL=1 sweeps all 164; CODELM_HUMANEVAL_X_BACKEND=docker runs it in the sandbox-lang image."""
    backend = os.environ.get("CODELM_HUMANEVAL_X_BACKEND", "local")
    problems = list(bench.problems.values())
    if not os.environ.get("CODELM_HUMANEVAL_X_FULL"):
        problems = problems[::8]
    canonical = verdicts(bench, [(p, bench.reference(p)) for p in problems], backend=backend)
    failing = {p["task_id"] for p, v in zip(problems, canonical) if not v.passed}
    assert failing <= KNOWN_BAD, failing - KNOWN_BAD
    mutants = [(p, m) for p in problems if p["task_id"] not in KNOWN_BAD and (m := mutate(bench.reference(p)))]
    mutant_verdicts = verdicts(bench, mutants, backend=backend)
    killed = sum(not v.passed for v in mutant_verdicts)
    assert killed >= 0.95 * len(mutants), f"{killed}/{len(mutants)} mutants fail"
    stop = threading.Event()
    hogs = [threading.Thread(target=_hog, args=(stop,)) for _ in range(2)]
    for hog in hogs:
        hog.start()
    try:
        loaded = verdicts(bench, [(p, bench.reference(p)) for p in problems], workers=3 * (os.cpu_count() or 1),
                          backend=backend)
    finally:
        stop.set()
    stable = [i for i, p in enumerate(problems) if p["task_id"] not in KNOWN_BAD]
    assert [loaded[i].passed for i in stable] == [canonical[i].passed for i in stable]


def _hog(stop):
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    stop.wait()
    proc.kill()
    proc.wait()


def test_mutate_changes_the_code():
    assert mutate("    return a + b;\n}\n") == "    return a - b;\n}\n"
    assert mutate("vector<int> v;\n") == "vector>=int> v;\n"  # compile error: still wrong


@pytest.mark.parametrize("mode", ["fim", "mim"])
def test_a_model_is_evaluated_on_generation_and_infilling(tmp_path, mode):
    """The generate -> post-process -> score path, for generation and for infilling in both decoding modes."""
    if toolchains.missing("js"):
        pytest.skip(toolchains.missing("js"))
    from evals.runner import evaluate_model, resolve_sampling
    from fake_models import ReferenceModel

    bench = hx.load("js")
    generation = evaluate_model(bench, ReferenceModel(bench), tmp_path / "gen", resolve_sampling([1]), limit=2)
    assert generation["pass@1"] == 1.0
    infill = hx.HumanEvalXInfilling(bench, mode=mode)
    tasks = sorted(infill.problems)[:3]
    good = evaluate_model(infill, ReferenceModel(infill), tmp_path / "good", resolve_sampling([1]), tasks=tasks)
    bad = evaluate_model(infill, ReferenceModel(infill, wrong=True), tmp_path / "bad", resolve_sampling([1]),
                         tasks=tasks)
    assert (good["pass@1"], good["exact_match"], bad["pass@1"], bad["exact_match"]) == (1.0, 1.0, 0.0, 0.0)
    assert good["protocol"]["mode"] == mode and good["protocol"]["language"] == "js"


def test_humaneval_x_without_a_language_is_a_clear_error(tmp_path):
    samples = tmp_path / "s.jsonl"
    samples.write_text("")
    result = subprocess.run([sys.executable, "-m", "evals.cli", "eval", "humaneval-x", "--samples", str(samples)],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "needs --language" in result.stderr and "Traceback" not in result.stderr

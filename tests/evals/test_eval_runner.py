"""The shared path: protocol, seeds, generate -> score with fake models, resuming, the report."""

import json

import pytest

from evals import humaneval, infilling, mbpp, runner
from evals.data import EvalInputError
from evals.runner import evaluate_model, evaluate_samples, resolve_sampling, sample_seed

from fake_models import ReferenceModel  # tests/evals/ is on sys.path (pytest's default rootdir-based import)


@pytest.fixture(scope="module")
def he():
    return humaneval.load()


def read_jsonl(path):
    return [json.loads(line) for line in open(path)]


# --- protocol -----------------------------------------------------------------------------------------------------

def test_k1_alone_is_greedy_with_one_sample():
    sampling = resolve_sampling([1])
    assert (sampling.n, sampling.temperature, sampling.top_p) == (1, 0.0, 1.0)
    assert runner.describe_sampling(sampling).startswith("greedy decoding, n=1")


def test_the_papers_temperatures():
    assert resolve_sampling([1], n=20).temperature == 0.2
    sampling = resolve_sampling([1, 10, 100], n=200)
    assert (sampling.n, sampling.temperature, sampling.top_p) == (200, 0.8, 0.95)
    assert resolve_sampling([1, 10]).n == 10
    assert resolve_sampling([1], n=5, temperature=0.6, top_p=0.9).top_p == 0.9


def test_k_above_n_is_refused():
    with pytest.raises(EvalInputError, match="pass@10 needs at least 10 samples"):
        resolve_sampling([1, 10], n=5)


def test_seeds_depend_only_on_base_seed_task_and_index():
    assert sample_seed(0, "HumanEval/3", 7) == sample_seed(0, "HumanEval/3", 7)
    seeds = {sample_seed(b, t, i) for b in (0, 1) for t in ("HumanEval/3", "HumanEval/4") for i in range(50)}
    assert len(seeds) == 200 and all(0 <= s < 2**32 for s in seeds)


def test_task_selection_names_the_set(he):
    ids, task_set = runner.select_tasks(he, limit=3)
    assert ids == ["HumanEval/0", "HumanEval/1", "HumanEval/2"] and task_set["selection"] == "first 3 of all 164 tasks"
    ids, task_set = runner.select_tasks(he, tasks=["HumanEval/9", "HumanEval/2"])
    assert ids == ["HumanEval/2", "HumanEval/9"] and task_set["selection"] == "2 chosen tasks of 164"
    with pytest.raises(EvalInputError, match="unknown task id 'HumanEval/400'"):
        runner.select_tasks(he, tasks=["HumanEval/400"])


# --- generate -> score ----------------------------------------------------------------------------------------------

def test_a_reference_model_scores_one_and_a_wrong_model_zero(he, tmp_path):
    good = evaluate_model(he, ReferenceModel(he), tmp_path / "good", resolve_sampling([1]), limit=6)
    bad = evaluate_model(he, ReferenceModel(he, wrong=True), tmp_path / "bad", resolve_sampling([1]), limit=6)
    assert good["pass@1"] == 1.0 and bad["pass@1"] == 0.0
    assert good["protocol"]["description"].startswith("greedy decoding, n=1")
    samples = read_jsonl(tmp_path / "good" / "samples.jsonl")
    assert "trailing_junk" not in "".join(s["completion"] for s in samples)  # cut at "\ndef"


def test_the_model_gets_the_protocol_stops_and_per_sample_seeds(he, tmp_path):
    model = ReferenceModel(he)
    summary = evaluate_model(he, model, tmp_path / "out", resolve_sampling([1, 2], n=3), ks=[1, 2], limit=4,
                             batch_size=3, seed=5)
    assert [len(c["prompts"]) for c in model.calls] == [3, 1]
    call = model.calls[0]
    assert (call["n"], call["temperature"], call["top_p"], call["stop"]) == (3, 0.8, 0.95, humaneval.STOP)
    assert call["seeds"][1] == [sample_seed(5, "HumanEval/1", j) for j in range(3)]
    assert summary["pass@1"] == summary["pass@2"] == 1.0 and summary["counts"]["samples"] == 12


class Interrupted(Exception):
    pass


class DiesAfter(ReferenceModel):
    """Generates `calls_left` batches, then fails like a killed job."""

    def __init__(self, benchmark, calls_left):
        super().__init__(benchmark)
        self.calls_left = calls_left

    def complete(self, *args, **kwargs):
        if self.calls_left == 0:
            raise Interrupted
        self.calls_left -= 1
        return super().complete(*args, **kwargs)


def test_a_resumed_run_makes_the_same_samples_as_an_uninterrupted_one(he, tmp_path):
    sampling = resolve_sampling([1], n=2, temperature=0.8)
    evaluate_model(he, ReferenceModel(he), tmp_path / "whole", sampling, limit=5, batch_size=2)
    with pytest.raises(Interrupted):
        evaluate_model(he, DiesAfter(he, calls_left=1), tmp_path / "resumed", sampling, limit=5, batch_size=2)
    assert len(read_jsonl(tmp_path / "resumed" / "samples.jsonl")) == 4
    rest = ReferenceModel(he)
    summary = evaluate_model(he, rest, tmp_path / "resumed", sampling, limit=5, batch_size=2)
    assert sum(len(c["prompts"]) for c in rest.calls) == 3  # only the missing tasks were asked for

    def key(row):
        return row["task_id"], row["completion_id"]
    whole = sorted(read_jsonl(tmp_path / "whole" / "samples.jsonl"), key=key)
    resumed = sorted(read_jsonl(tmp_path / "resumed" / "samples.jsonl"), key=key)
    assert whole == resumed
    assert summary["counts"]["samples"] == 10 and summary["pass@1"] == 1.0


def test_scoring_resumes_without_rerunning_finished_programs(he, samples_file, tmp_path, monkeypatch):
    path = samples_file([{"task_id": t, "completion": he.problems[t]["canonical_solution"]} for t in list(he.problems)[:4]])
    first = evaluate_samples(he, path, tmp_path / "out", limit=4)
    results = tmp_path / "out" / "results.jsonl"
    lines = results.read_text().splitlines(keepends=True)
    results.write_text("".join(lines[:2]) + lines[2][:25])  # killed while writing the third line

    ran = []
    real = runner.run_programs
    monkeypatch.setattr(runner, "run_programs", lambda programs, **kw: ran.append(len(programs)) or real(programs, **kw))
    second = evaluate_samples(he, path, tmp_path / "out", limit=4)
    assert ran == [2]
    assert second["pass@1"] == first["pass@1"] == 1.0
    assert len(read_jsonl(results)) == 4


def test_a_directory_from_another_evaluation_is_refused(he, samples_file, tmp_path):
    evaluate_model(he, ReferenceModel(he), tmp_path / "out", resolve_sampling([1]), limit=1)
    with pytest.raises(EvalInputError, match="differs in: n, temperature, top_p"):
        evaluate_model(he, ReferenceModel(he), tmp_path / "out", resolve_sampling([1], n=2), limit=1)


def test_pass_at_k_is_withheld_until_every_task_has_k_samples(he, samples_file, tmp_path):
    canonical = [{"task_id": t, "completion": he.problems[t]["canonical_solution"]} for t in ("HumanEval/0", "HumanEval/1")]
    path = samples_file(canonical + canonical[:1])
    summary = evaluate_samples(he, path, tmp_path / "out", ks=[1, 2], limit=2)
    assert summary["pass@1"] == 1.0 and "pass@2" not in summary
    assert summary["withheld"] == {"pass@2": "1 of 2 tasks have fewer than 2 scored samples"}
    written = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert written["set"]["selection"] == "first 2 of all 164 tasks" and written["pass@1"] == 1.0


def test_mbpp_and_infilling_through_a_model(tmp_path):
    three_shot = mbpp.load(prompt_format="3shot")
    assert evaluate_model(three_shot, ReferenceModel(three_shot), tmp_path / "mbpp", resolve_sampling([1]),
                          limit=3)["pass@1"] == 1.0
    for mode in ("fim", "mim"):
        benchmark = infilling.load("random-span-light", mode=mode)
        model = ReferenceModel(benchmark)
        summary = evaluate_model(benchmark, model, tmp_path / mode, resolve_sampling([1]), limit=3)
        assert summary["pass@1"] == summary["exact_match"] == 1.0
        assert model.calls[0]["mode"] == mode and summary["protocol"]["mode"] == mode


# --- infrastructure errors and progress ------------------------------------------------------------------------------

def flaky_sandbox(monkeypatch, fail_times):
    """Make sandbox.run_many report infra_error for each program's first `fail_times` attempts."""
    import sandbox
    real, attempts = sandbox.run_many, {}

    def run_many(programs, *, on_result=None, **kwargs):
        def maybe_fail(i, result):
            key = programs[i].rsplit("\n", 2)[0]  # the program without its nonce line
            attempts[key] = attempts.get(key, 0) + 1
            if attempts[key] <= fail_times:
                result = sandbox.Result("infra_error", None, "", "fork server gone", 0.0, 0.0)
            on_result(i, result)
        return real(programs, on_result=maybe_fail, **kwargs)

    monkeypatch.setattr(sandbox, "run_many", run_many)


def test_infrastructure_errors_are_retried_not_failed(he, samples_file, tmp_path, monkeypatch):
    flaky_sandbox(monkeypatch, fail_times=2)
    path = samples_file([{"task_id": t, "completion": he.problems[t]["canonical_solution"]} for t in list(he.problems)[:3]])
    summary = evaluate_samples(he, path, tmp_path / "out", limit=3)
    assert summary["pass@1"] == 1.0 and summary["counts"]["not_scored"] == 0


def test_persistent_infrastructure_errors_leave_samples_unscored(he, samples_file, tmp_path, monkeypatch, capsys):
    from evals.cli import main
    flaky_sandbox(monkeypatch, fail_times=99)
    path = samples_file([{"task_id": "HumanEval/0", "completion": he.problems["HumanEval/0"]["canonical_solution"]}])
    assert main(["eval", "humaneval", "--samples", str(path), "--limit", "1", "--output", str(tmp_path / "out")]) == 1
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["counts"]["not_scored"] == 1 and summary["counts"]["failed"] == 0 and "pass@1" not in summary
    assert "NOT scored" in capsys.readouterr().out
    monkeypatch.undo()  # the sandbox recovers: a re-run scores what was left
    assert main(["eval", "humaneval", "--samples", str(path), "--limit", "1", "--output", str(tmp_path / "out")]) == 0


def test_progress_lines_say_done_total_rate_and_eta(he, tmp_path):
    import io
    stream = io.StringIO()
    evaluate_model(he, ReferenceModel(he), tmp_path / "out", resolve_sampling([1]), limit=3, batch_size=1,
                   progress_every=0, stream=stream)
    lines = stream.getvalue().splitlines()
    assert any(line.startswith("humaneval generate: 1/3 samples,") and "/s, ETA" in line for line in lines)
    assert any(line.startswith("humaneval score: ") and "/3 programs" in line for line in lines)

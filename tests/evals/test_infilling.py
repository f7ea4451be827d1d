"""HumanEval-infilling: canonical middles pass every set, with exact match 1.0; broken middles score 0."""

import pytest

from evals import infilling
from evals.runner import evaluate_samples

# A deterministic spread of tasks per set for the fast suite; the full sets run under -m slow.
STRIDE = {"single-line": 25, "multi-line": 150, "random-span": 40, "random-span-light": 4}


def every_nth(benchmark, stride):
    return list(benchmark.problems)[::stride]


def test_the_program_is_prefix_middle_suffix_then_tests():
    benchmark = infilling.load("single-line")
    problem = benchmark.problems["SingleLineInfilling/HumanEval/0/L0"]
    assert benchmark.program(problem, "MIDDLE") == (problem["prompt"] + "MIDDLE" + problem["suffix"] + "\n"
                                                    + problem["test"] + "\n" + "check(has_close_elements)")


def test_exact_match_ignores_trailing_whitespace_but_not_indentation():
    assert infilling.exact_match("    return x  \n\n", "    return x\n")
    assert not infilling.exact_match("return x\n", "    return x\n")


def score_canonical(set_name, task_ids, samples_file, out):
    benchmark = infilling.load(set_name)
    path = samples_file([{"task_id": t, "completion": benchmark.problems[t]["canonical_solution"]} for t in task_ids])
    return evaluate_samples(benchmark, path, out, tasks=task_ids)


@pytest.mark.parametrize("set_name", list(infilling.SETS))
def test_canonical_middles_pass_a_spread_of_each_set(set_name, samples_file, tmp_path):
    task_ids = every_nth(infilling.load(set_name), STRIDE[set_name])
    summary = score_canonical(set_name, task_ids, samples_file, tmp_path / "out")
    assert summary["pass@1"] == 1.0 and summary["exact_match"] == 1.0
    assert summary["counts"]["tasks"] == len(task_ids)


@pytest.mark.slow
@pytest.mark.parametrize("set_name", list(infilling.SETS))
def test_canonical_middles_pass_every_task(set_name, samples_file, tmp_path):
    benchmark = infilling.load(set_name)
    summary = score_canonical(set_name, list(benchmark.problems), samples_file, tmp_path / "out")
    assert summary["counts"]["passed"] == len(benchmark.problems)


def test_broken_middles_score_zero(samples_file, tmp_path):
    benchmark = infilling.load("random-span-light")
    path = samples_file([{"task_id": t, "completion": "\n)(\n"} for t in every_nth(benchmark, 4)])
    summary = evaluate_samples(benchmark, path, tmp_path / "out", tasks=every_nth(benchmark, 4))
    assert summary["pass@1"] == 0.0 and summary["exact_match"] == 0.0


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_the_codelm_backend_infills_a_batch_of_tasks_by_meet_in_the_middle_as_each_alone(temperature):
    """The eval hands the model a batch of tasks with per-sample seeds; meet-in-the-middle decodes them as one batch,
    and every sample is what infilling its task alone with its seed gives."""
    from pathlib import Path

    from support import wandering_model

    from codelm.checkpoint import Checkpoint
    from codelm.generate import SamplingParams
    from codelm.infill import infill
    from evals.benchmark import Sampling
    from evals.models import CodelmModel

    model, tok, caps = wandering_model(context_length=256)
    lm = CodelmModel(Checkpoint(Path("wandering"), model, tok, model.config, caps))
    benchmark = infilling.load("single-line", mode="mim")
    problems = [benchmark.problems[t] for t in every_nth(benchmark, 97)[:4]]
    seeds = [[11 * i, 11 * i + 5] for i in range(len(problems))]
    sampling = Sampling(n=2, temperature=temperature, top_p=0.95, max_new_tokens=8)
    batched = benchmark.generate(lm, problems, sampling, seeds)
    params = SamplingParams(max_new_tokens=8, temperature=temperature, top_p=0.95)
    alone = [[c.text for c in infill(model, tok, p["prompt"], p["suffix"], "mim", params, n=2, seeds=s,
                                     capabilities=caps).samples] for p, s in zip(problems, seeds)]
    assert batched == alone
    assert len({text for row in batched for text in row}) > 1

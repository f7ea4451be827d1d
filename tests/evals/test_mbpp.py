"""MBPP: prompts in both formats, the program order, and the 500 reference solutions passing."""

import pytest

from evals import mbpp
from evals.runner import evaluate_samples


@pytest.fixture(scope="module")
def benchmark():
    return mbpp.load()


def test_bigcode_prompt_is_a_docstring_with_the_first_test(benchmark):
    problem = benchmark.problems["Mbpp/11"]
    assert benchmark.prompt(problem) == f'"""\n{problem["text"]}\n{problem["test_list"][0]}\n"""\n'
    assert '\n"""' in benchmark.stop and "\nassert" in benchmark.stop


def test_three_shot_prompt_uses_tasks_2_3_4_and_ends_at_begin():
    benchmark = mbpp.load(prompt_format="3shot")
    prompt = benchmark.prompt(benchmark.problems["Mbpp/11"])
    blocks = prompt.split("You are an expert Python programmer, and here is your task: ")[1:]
    assert len(blocks) == 4
    assert blocks[0].startswith("Write a function to find the similar elements from the given two tuple lists.")
    assert "def similar_elements" in blocks[0] and blocks[0].endswith("[DONE]\n")
    assert "def is_not_prime" in blocks[1] and "def heap_queue_largest" in blocks[2]
    assert prompt.endswith('assert remove_Occ("PHP","P") == "H"\n[BEGIN]\n')
    assert "\r" not in prompt
    assert benchmark.stop == ["[DONE]"]
    assert benchmark.postprocess("def f():\n    return 1\n[DONE]\nmore") == "def f():\n    return 1\n"


def test_solution_then_setup_code_then_tests(benchmark):
    problem = benchmark.problems["Mbpp/367"]
    program = benchmark.program(problem, "SOLUTION")
    assert program.index("SOLUTION") < program.index("root = Node(1)") < program.index("assert is_tree_balanced")


def run_references(benchmark, task_ids, samples_file, out):
    path = samples_file([{"task_id": t, "completion": benchmark.problems[t]["code"]} for t in task_ids])
    return evaluate_samples(benchmark, path, out, tasks=task_ids)


def test_all_500_references_pass(benchmark, samples_file, tmp_path):
    # Includes task 123 (about 2 CPU seconds) and tasks 367 and 927 (setup code that uses the solution's class).
    summary = run_references(benchmark, list(benchmark.problems), samples_file, tmp_path / "out")
    assert summary["counts"]["passed"] == 500 and summary["pass@1"] == 1.0


def test_wrong_solutions_score_zero(benchmark, samples_file, tmp_path):
    path = samples_file([{"task_id": t, "completion": "def unrelated():\n    return 0\n"} for t in benchmark.problems])
    summary = evaluate_samples(benchmark, path, tmp_path / "out", limit=60)
    assert summary["pass@1"] == 0.0 and summary["set"]["selection"] == "first 60 of all 500 tasks"

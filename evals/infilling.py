"""HumanEval-infilling (Bavarian et al. 2022, "Efficient Training of Language Models to Fill in the Middle", sec. 5).

Every task cuts a span out of a HumanEval canonical solution. Sets (--set):
  single-line        1033 tasks: each non-blank line of each solution       HumanEval-SingleLineInfilling.jsonl.gz
  multi-line         5815 tasks: every contiguous range of non-blank lines HumanEval-MultiLineInfilling.jsonl.gz
  random-span        1640 tasks: 10 random character spans per problem     HumanEval-RandomSpanInfilling.jsonl.gz
  random-span-light   164 tasks: 1 random span per problem                  HumanEval-RandomSpanInfillingLight.jsonl.gz
Data: `humaneval-infilling/<file>` in the local data directory (see evals/data.py), else the upstream release
https://github.com/openai/human-eval-infilling/raw/master/data/<file>, cached under ~/.cache/codelm/.
Fields: task_id ("SingleLineInfilling/HumanEval/0/L0"), entry_point, prompt (the prefix), suffix,
canonical_solution (the middle), test.

Prompt: the model is asked for the middle between prompt and suffix with model.infill(mode=...): "fim" decodes from
a fill-in-the-middle prompt, "mim" with meet-in-the-middle decoding (Nguyen et al. 2023). No stop sequences: the
model ends the middle itself (its end-of-middle token), as in the FIM paper.
Post-processing: none; completions are scored as the model or the sample file gives them.
Program: prompt + completion + suffix + "\\n" + test + "\\n" + f"check({entry_point})" (human-eval-infilling's
execution.py), then the nonce line. Time budget: 3 CPU seconds.
Also reported: exact match, the share of completions equal to canonical_solution once trailing whitespace on each
line and blank lines at either end are ignored (indentation still counts: it changes the program).
"""

from pathlib import Path

from codelm.terms import INFILL_MODES
from evals.benchmark import Benchmark, Sampling
from evals.data import EvalInputError, find_or_download, read_jsonl

SETS = {
    "single-line": "HumanEval-SingleLineInfilling.jsonl.gz",
    "multi-line": "HumanEval-MultiLineInfilling.jsonl.gz",
    "random-span": "HumanEval-RandomSpanInfilling.jsonl.gz",
    "random-span-light": "HumanEval-RandomSpanInfillingLight.jsonl.gz",
}
UPSTREAM = "https://github.com/openai/human-eval-infilling/raw/master/data/"
CACHE_DIR = Path.home() / ".cache" / "codelm" / "humaneval-infilling"
MODES = INFILL_MODES


def normalize_for_match(code: str) -> str:
    return "\n".join(line.rstrip() for line in code.strip("\n").split("\n")).strip("\n")


def exact_match(completion: str, canonical: str) -> bool:
    return normalize_for_match(completion) == normalize_for_match(canonical)


class Infilling(Benchmark):
    stop = []
    cpu_s = 3.0

    def __init__(self, problems, source, set_name, mode="fim"):
        super().__init__(problems, source)
        if mode not in MODES:
            raise EvalInputError(f"unknown infilling mode {mode!r}; choose from {', '.join(MODES)}")
        self.name = f"infilling/{set_name}"
        self.set_name = set_name
        self.mode = mode

    def reference(self, problem):
        return problem["canonical_solution"]

    def program(self, problem, completion):
        return (problem["prompt"] + completion + problem["suffix"] + "\n" + problem["test"] + "\n"
                + f"check({problem['entry_point']})")

    def generate(self, model, problems, sampling: Sampling, seeds):
        return model.infill([p["prompt"] for p in problems], [p["suffix"] for p in problems], mode=self.mode,
                            n=len(seeds[0]), temperature=sampling.temperature, top_p=sampling.top_p,
                            max_new_tokens=sampling.max_new_tokens, stop=self.stop, seeds=seeds)

    def postprocess(self, completion):
        return completion

    def sample_fields(self, problem, completion):
        return {"exact_match": exact_match(completion, problem["canonical_solution"])}

    def extra_metrics(self, results):
        """Exact match over all scored samples (like pass@1 with n samples, a mean over samples)."""
        if not results:
            return {}
        matches = sum(exact_match(r["completion"], self.problems[r["task_id"]]["canonical_solution"]) for r in results)
        return {"exact_match": matches / len(results)}

    def protocol_extras(self):
        return {"mode": self.mode}


def load(set_name: str = "single-line", data_dir=None, mode: str = "fim") -> Infilling:
    if set_name not in SETS:
        raise EvalInputError(f"unknown infilling set {set_name!r}; choose from {', '.join(SETS)}")
    path = _find_file(SETS[set_name], data_dir)
    problems = {row["task_id"]: row for _, row in read_jsonl(path)}
    return Infilling(problems, str(path), set_name, mode)


def _find_file(file_name: str, data_dir) -> Path:
    return find_or_download(f"humaneval-infilling/{file_name}", UPSTREAM + file_name, CACHE_DIR,
                            f"HumanEval-infilling file {file_name}", data_dir)

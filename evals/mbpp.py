'''MBPP (Austin et al. 2021, "Program Synthesis with Large Language Models"): the 500 test problems, task ids 11-510.

Data: `mbpp/mbpp.jsonl` (the full release, 974 tasks) from the local data directory (see evals/data.py), else the
Hugging Face hub, `datasets.load_dataset("google-research-datasets/mbpp", "full")`, whose "test" split is 11-510 and
"prompt" split 1-10. Fields: task_id, text, code, test_list, test_setup_code, challenge_test_list (unused, as in
the paper). Task ids are written "Mbpp/11" (evalplus's spelling); sample files may also use 11 or "11".

Prompt formats (--mbpp-format):
  bigcode (default; bigcode-evaluation-harness, after InCoder): the description and the first test in a docstring,
      '"""\\n{text}\\n{test_list[0]}\\n"""\\n'. Stop sequences "\\nclass", "\\nassert", '\\n"""', "\\nprint", "\\nif",
      "\\n<|/", "\\n```" (bigcode's).
  3shot (the paper, section 2.2): three worked examples, tasks 2, 3 and 4, then the task, each as
      "You are an expert Python programmer, and here is your task: {text} Your code should pass these tests:\\n\\n"
      "{tests, one per line}\\n[BEGIN]\\n" followed, for the examples, by "{code}\\n[DONE]\\n". Stop sequence
      "[DONE]". The examples' code has its CRLF line ends normalised to LF.
Post-processing: a model's continuation is cut at the first stop sequence; sample files are scored as given.
Program: completion + "\\n" + test_setup_code + "\\n" + the tests, one per line, then the nonce line. The solution comes
before the setup code because tasks 367 and 927 set up trees with the `Node` class their solution defines.
Time budget: 10 CPU seconds per program (task 123's reference alone takes about 2 s on a slow core).
'''

import re

from evals.benchmark import Benchmark
from evals.data import EvalInputError, find_local_file, read_jsonl

HF_DATASET = "google-research-datasets/mbpp"
LOCAL_FILE = "mbpp/mbpp.jsonl"
TEST_IDS = range(11, 511)
FEW_SHOT_IDS = (2, 3, 4)
BIGCODE_STOP = ["\nclass", "\nassert", '\n"""', "\nprint", "\nif", "\n<|/", "\n```"]
THREE_SHOT_STOP = ["[DONE]"]
FORMATS = ("bigcode", "3shot")


def bigcode_prompt(problem: dict) -> str:
    return f'"""\n{problem["text"]}\n{problem["test_list"][0]}\n"""\n'


def three_shot_block(problem: dict) -> str:
    """The paper's framing of one task, up to and including [BEGIN]."""
    tests = "\n".join(problem["test_list"])
    return (f"You are an expert Python programmer, and here is your task: {problem['text']} "
            f"Your code should pass these tests:\n\n{tests}\n[BEGIN]\n")


def three_shot_prompt(problem: dict, shots: list[dict]) -> str:
    examples = "".join(three_shot_block(s) + s["code"].replace("\r\n", "\n") + "\n[DONE]\n" for s in shots)
    return examples + three_shot_block(problem)


class MBPP(Benchmark):
    name = "mbpp"
    cpu_s = 10.0

    def __init__(self, problems, source, shots, prompt_format="bigcode"):
        super().__init__(problems, source)
        if prompt_format not in FORMATS:
            raise EvalInputError(f"unknown MBPP prompt format {prompt_format!r}; choose from {', '.join(FORMATS)}")
        self.shots = shots
        self.prompt_format = prompt_format
        self.stop = BIGCODE_STOP if prompt_format == "bigcode" else THREE_SHOT_STOP

    def resolve_task_id(self, raw):
        match = re.fullmatch(r"(?:mbpp/)?(\d+)", str(raw).strip(), flags=re.IGNORECASE)
        if match is None:
            return None
        task_id = f"Mbpp/{int(match.group(1))}"
        return task_id if task_id in self.problems else None

    def prompt(self, problem):
        if self.prompt_format == "bigcode":
            return bigcode_prompt(problem)
        return three_shot_prompt(problem, self.shots)

    def reference(self, problem):
        return problem["code"]

    def program(self, problem, completion):
        return completion + "\n" + problem["test_setup_code"] + "\n" + "\n".join(problem["test_list"])

    def protocol_extras(self):
        return {"prompt_format": self.prompt_format}


def load(data_dir=None, prompt_format: str = "bigcode") -> MBPP:
    rows, source = _read_rows(data_dir)
    by_id = {int(row["task_id"]): row for row in rows}
    missing = [i for i in list(TEST_IDS) + list(FEW_SHOT_IDS) if i not in by_id]
    if missing:
        raise EvalInputError(f"{source}: MBPP tasks missing, e.g. {missing[:5]}")
    problems = {f"Mbpp/{i}": dict(by_id[i], task_id=f"Mbpp/{i}") for i in TEST_IDS}
    shots = [by_id[i] for i in FEW_SHOT_IDS]
    return MBPP(problems, source, shots, prompt_format)


def _read_rows(data_dir) -> tuple[list[dict], str]:
    path, tried = find_local_file(LOCAL_FILE, data_dir)
    if path is not None:
        return [row for _, row in read_jsonl(path)], str(path)
    try:
        return _rows_from_hub(), f"hf:{HF_DATASET}"
    except Exception as e:  # offline, no datasets cache: say everything that was tried
        tried.append(f"Hugging Face hub {HF_DATASET} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
        raise EvalInputError("MBPP data not found; tried " + "; ".join(tried)) from None


def _rows_from_hub() -> list[dict]:
    import datasets  # heavy; only when no local copy exists

    full = datasets.load_dataset(HF_DATASET, "full")
    return [dict(row) for split in ("prompt", "test") for row in full[split]]

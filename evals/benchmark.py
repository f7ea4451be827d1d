"""What every benchmark shares: its tasks, how a completion becomes a program, and how a model is asked.

A benchmark module (humaneval.py, mbpp.py, infilling.py) subclasses Benchmark and documents its prompt format, stop
sequences and post-processing. The runner (evals/runner.py) only uses the methods here.
"""

from dataclasses import dataclass

from codelm.stops import cut_at_stop
from evals.models import CompletionModel


@dataclass(frozen=True)
class Sampling:
    """The decoding protocol; temperature 0 is greedy."""
    n: int
    temperature: float
    top_p: float
    max_new_tokens: int


class Benchmark:
    name: str = ""  # e.g. "humaneval", "mbpp", "infilling/single-line"
    stop: list[str] = []
    cpu_s: float = 3.0  # default CPU-time budget per program

    def __init__(self, problems: dict[str, dict], source: str):
        self.problems = problems  # task_id -> problem, in benchmark order
        self.source = source  # where the problems were read from, for the report

    def resolve_task_id(self, raw) -> str | None:
        """The canonical task id for a task id from a sample file, or None if there is no such task."""
        return raw if isinstance(raw, str) and raw in self.problems else None

    def program(self, problem: dict, completion: str) -> str:
        """The program that passes iff the completion is correct (the nonce line is added by evals/execution.py)."""
        raise NotImplementedError

    def runnable(self, problem: dict, completion: str):
        """What the sandbox runs: the program's text (Python: the nonce line is appended by evals/execution.py), or
        a function of the run's nonce to a sandbox Program (compiled languages put the nonce where it belongs)."""
        return self.program(problem, completion)

    def unavailable(self, problem: dict) -> str | None:
        """Why this task cannot run on this machine (its samples then fail with that reason), or None."""
        return None

    def reference(self, problem: dict) -> str:
        """The canonical completion: scoring it must pass."""
        raise NotImplementedError

    def prompt(self, problem: dict) -> str:
        raise NotImplementedError

    def generate(self, model: CompletionModel, problems: list[dict], sampling: Sampling,
                 seeds: list[list[int]]) -> list[list[str]]:
        """len(seeds[i]) completions for each problem, post-processed. Left-to-right by default."""
        outputs = model.complete([self.prompt(p) for p in problems], n=len(seeds[0]), temperature=sampling.temperature,
                                 top_p=sampling.top_p, max_new_tokens=sampling.max_new_tokens, stop=self.stop,
                                 seeds=seeds)
        return [[self.postprocess(text) for text in texts] for texts in outputs]

    def postprocess(self, completion: str) -> str:
        return cut_at_stop(completion, self.stop)[0]  # Codex paper, section 2.3: stop at "\nclass", "\ndef", ...

    def sample_fields(self, problem: dict, completion: str) -> dict:
        """Extra per-sample fields for results.jsonl (infilling adds exact_match)."""
        return {}

    def extra_metrics(self, results: list[dict]) -> dict:
        """Metrics beyond pass@k, computed from the per-sample results (infilling adds exact match)."""
        return {}

    def protocol_extras(self) -> dict:
        """Benchmark options that change the samples (prompt format, decoding mode), recorded in the report."""
        return {}

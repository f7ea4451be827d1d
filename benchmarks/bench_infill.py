"""FIM against meet-in-the-middle decoding on one mim+fim model, over HumanEval single-line infilling tasks.

    python benchmarks/bench_infill.py --checkpoint RUN_OR_CHECKPOINT [--problems K] [--limit N]
    python benchmarks/bench_infill.py --problems 12 --overfit-steps 600
    python benchmarks/bench_infill.py --eval --checkpoint RUN_OR_CHECKPOINT --limit 100 [--batch-size 8] [--rounds 3]
    python benchmarks/bench_infill.py --eval --problems 12 --overfit-steps 300

Reports, per mode: exact match (evals' normalisation), sequential model passes per middle (the prefill included:
the latency that meet-in-the-middle is for), wall time per middle, and for meet-in-the-middle how often the two sides
met (otherwise the more likely side's complete generation is used). Both modes decode greedily with the same token
budget and no stop strings: a FIM middle ends at end-of-text, a meet-in-the-middle one where the sides join.

Without a checkpoint, `--overfit-steps N` trains a small `mim:0.5,fim:0.5` model on the chosen problems' own
canonical solutions, i.e. a model that has memorised them. Its exact match says nothing about generalisation; it
measures the decoding mechanics (do the sides meet, how many passes does each mode take) on real task shapes, on
machines where training a real model is out of reach. The machine is shared: compare the modes, not the seconds.

--eval measures evaluation throughput instead: the tasks' middles generated the way `codelm eval infilling` generates
them (evals' Infilling benchmark over the codelm backend, --batch-size tasks per model call, greedy, the eval's
per-sample seeds, by default its 512-token budget), timed per variant: FIM batched, meet-in-the-middle one task per
call (how evaluation decoded it before it was batched) and meet-in-the-middle batched. Rounds alternate the order of
the variants; medians are reported, with tasks per second and each variant's time relative to FIM's. Scoring in the
sandbox is the same for both modes and is left out. The batched middles must equal the one-task-per-call ones; the
report says whether they do.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from codelm import benchdata
from codelm.generate import SamplingParams
from codelm.infill import infill

DATA = benchdata.find("humaneval-infilling/HumanEval-SingleLineInfilling.jsonl.gz")[0]  # packaged with codelm


def normalize(code: str) -> str:
    """evals.infilling's exact-match normalisation (trailing spaces and blank edge lines ignored)."""
    return "\n".join(line.rstrip() for line in code.strip("\n").split("\n")).strip("\n")


def load_tasks(path: Path) -> list[dict]:
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


def problem_of(task: dict) -> str:
    return task["task_id"].split("/")[1] + "/" + task["task_id"].split("/")[2]


def shortest_problems(tasks: list[dict], k: int) -> list[str]:
    """The k problems with the shortest solutions: they fit one 128-token training window, so a small model
    memorises them in minutes on a CPU."""
    length = {problem_of(t): len(t["prompt"] + t["canonical_solution"] + t["suffix"]) for t in tasks}
    return sorted(length, key=length.get)[:k]


def overfit_model(tasks: list[dict], steps: int, out: Path):
    """Train a small mim:0.5,fim:0.5 model on the tasks' complete solutions (prompt + middle + suffix)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from support import make_shards, micro_train_config

    from codelm.tokenizer import get_tokenizer
    from codelm.train import Trainer

    vocabulary = "cl100k_base:2048"  # a 16k vocabulary's output head would dominate a 128-wide model's training
    tok = get_tokenizer(vocabulary)
    solutions = list({problem_of(t): t["prompt"] + t["canonical_solution"] + t["suffix"] for t in tasks}.values())
    shards = make_shards(out / "shards", solutions * 4, tok, val_texts=solutions)
    # line cuts: the holes here are whole lines, and a small model learns the FIM format far faster with them
    # (codelm/objectives.py, FillInTheMiddle); three layers for PSM, whose first middle token lies before the suffix
    cfg = micro_train_config(shards, out / "run", steps=steps, objective="mim:0.5,fim:0.5", fim_rate=1.0,
                             fim_split="line", batch_size=8, context_length=128, lr=5e-3, warmup_steps=30,
                             log_every=100, threads=1,
                             model=dict(n_layer=3, n_head=4, d_model=128, context_length=256, tokenizer=vocabulary))
    Trainer(cfg).fit()
    return out / "run"


def eval_throughput(ck, tasks: list[dict], max_new_tokens: int, batch_size: int, rounds: int) -> None:
    """Generation as `codelm eval infilling` runs it, per variant (mode, tasks per call); see the module docstring."""
    from evals import infilling
    from evals.benchmark import Sampling
    from evals.models import CodelmModel
    from evals.runner import sample_seed

    lm = CodelmModel(ck)
    sampling = Sampling(n=1, temperature=0.0, top_p=1.0, max_new_tokens=max_new_tokens)
    seeds = [[sample_seed(0, t["task_id"], 0)] for t in tasks]  # the eval's seeds (greedy: unused)
    variants = [("fim", batch_size), ("mim", 1), ("mim", batch_size)]
    benchmarks = {mode: infilling.Infilling({t["task_id"]: t for t in tasks}, "bench", "single-line", mode)
                  for mode in ("fim", "mim")}
    wall = {v: [] for v in variants}
    texts = {}
    for r in range(rounds):
        for mode, per_call in (variants if r % 2 == 0 else variants[::-1]):
            out = []
            start = time.perf_counter()
            for i in range(0, len(tasks), per_call):
                out += [row[0] for row in benchmarks[mode].generate(lm, tasks[i:i + per_call], sampling,
                                                                      seeds[i:i + per_call])]
            wall[mode, per_call].append(time.perf_counter() - start)
            texts[mode, per_call] = out
    n = len(tasks)
    print(f"{n} single-line tasks as `codelm eval infilling` generates them: greedy, max {max_new_tokens} new tokens, "
          f"{rounds} rounds (median); torch {torch.get_num_threads()} threads")
    fim = statistics.median(wall["fim", batch_size])
    print(f"{'variant':28s} {'s total':>8s} {'tasks/s':>8s} {'/ FIM':>7s} {'exact match':>12s}")
    for (mode, per_call), times in wall.items():
        t = statistics.median(times)
        name = f"{mode} {'batched' if per_call > 1 else 'one task per call'} ({per_call})"
        match = sum(normalize(x) == normalize(task["canonical_solution"])
                    for x, task in zip(texts[mode, per_call], tasks))
        print(f"{name:28s} {t:>8.2f} {n / t:>8.1f} {t / fim:>6.2f}x {match / n:>12.1%}")
    same = texts["mim", 1] == texts["mim", batch_size]
    mim_seq, mim_batch = statistics.median(wall["mim", 1]), statistics.median(wall["mim", batch_size])
    print(f"meet-in-the-middle batched: {mim_seq / mim_batch:.2f}x the one-task-per-call throughput; "
          f"{mim_batch / fim:.2f}x FIM's time; middles identical to one task per call: {'yes' if same else 'NO'}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", help="a mim+fim checkpoint or run directory")
    ap.add_argument("--overfit-steps", type=int, default=0,
                    help="instead of --checkpoint, train a memorising model on the chosen problems (see above)")
    ap.add_argument("--problems", type=int, default=0, help="only the K problems with the shortest solutions (0 = all)")
    ap.add_argument("--limit", type=int, default=0, help="at most this many tasks (0 = all of the chosen problems)")
    ap.add_argument("--max-new-tokens", type=int, default=None,
                    help="token budget per middle (default 48; with --eval, codelm eval's default 512)")
    ap.add_argument("--eval", action="store_true", help="measure evaluation throughput (see above)")
    ap.add_argument("--batch-size", type=int, default=8, help="--eval: tasks per model call (codelm eval's default 8)")
    ap.add_argument("--rounds", type=int, default=3, help="--eval: rounds over all variants (median reported)")
    ap.add_argument("--data", default=str(DATA), help="HumanEval-SingleLineInfilling.jsonl.gz")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared machine, oversubscribed threads make timings noise)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from codelm.loader import load_checkpoint

    tasks = load_tasks(Path(args.data))
    if args.problems:
        keep = set(shortest_problems(tasks, args.problems))
        tasks = [t for t in tasks if problem_of(t) in keep]
    if args.overfit_steps:
        path = overfit_model(tasks, args.overfit_steps, Path(tempfile.mkdtemp(prefix="bench_infill_")))
        what = f"overfit for {args.overfit_steps} steps on these problems' solutions (memorised: mechanics only)"
    elif args.checkpoint:
        path, what = args.checkpoint, args.checkpoint
    else:
        ap.error("give --checkpoint or --overfit-steps")
    if args.limit:
        tasks = tasks[:args.limit]
    ck = load_checkpoint(path)
    print(f"model: {what} ({path})")
    if args.eval:
        eval_throughput(ck, tasks, args.max_new_tokens or 512, args.batch_size, args.rounds)
        return
    args.max_new_tokens = args.max_new_tokens or 48
    # FIM as users get it (prompt-lookup drafts) and one token per pass, the paper's sequential baseline
    variants = {"fim": ("fim", SamplingParams(max_new_tokens=args.max_new_tokens)),
                "fim-1": ("fim", SamplingParams(max_new_tokens=args.max_new_tokens, lookup_draft=0)),
                "mim": ("mim", SamplingParams(max_new_tokens=args.max_new_tokens))}
    stats = {m: {"match": 0, "steps": [], "wall": [], "met": 0} for m in variants}
    best_fim = []  # FIM's passes were it exact: one per canonical token, plus end-of-text
    for t in tasks:  # infill runs under no_grad itself (training above must not)
        best_fim.append(len(ck.tokenizer.encode(t["canonical_solution"])) + 1)
        for name, (mode, params) in variants.items():  # alternate, so all see the same machine load
            start = time.perf_counter()
            r = infill(ck.model, ck.tokenizer, t["prompt"], t["suffix"], mode, params, capabilities=ck.capabilities)
            s = stats[name]
            s["wall"].append(time.perf_counter() - start)
            s["steps"].append(r.steps[0])
            s["met"] += r.met[0]
            s["match"] += normalize(r.best.text) == normalize(t["canonical_solution"])
    n = len(tasks)
    print(f"{n} single-line tasks; greedy, max {args.max_new_tokens} new tokens; torch {torch.get_num_threads()} "
          f"threads (shared machine)")
    print(f"{'mode':5s} {'exact match':>12s} {'passes mean':>12s} {'median':>7s} {'ms/middle':>10s} {'sides met':>10s}")
    for mode, s in stats.items():
        met = f"{s['met'] / n:>9.1%}" if mode == "mim" else f"{'-':>9s}"
        print(f"{mode:5s} {s['match'] / n:>12.1%} {statistics.mean(s['steps']):>12.2f} "
              f"{statistics.median(s['steps']):>7.1f} {1000 * statistics.mean(s['wall']):>10.1f} {met:>10s}")
    print(f"{'fim*':5s} {'':>12s} {statistics.mean(best_fim):>12.2f} {statistics.median(best_fim):>7.1f}"
          f"   (* FIM had it been exact: canonical tokens + end-of-text)")
    print("fim: with prompt-lookup drafts (the default); fim-1: one token per pass")
    mim, mw = statistics.mean(stats["mim"]["steps"]), statistics.mean(stats["mim"]["wall"])
    for name in ("fim-1", "fim"):
        fim, fw = statistics.mean(stats[name]["steps"]), statistics.mean(stats[name]["wall"])
        print(f"meet-in-the-middle / {name}: {mim / fim:.2f}x the sequential passes, {mw / fw:.2f}x the wall time")
    print(f"meet-in-the-middle / FIM at its best (one pass per canonical token): {mim / statistics.mean(best_fim):.2f}x")


if __name__ == "__main__":
    main()

"""Mini-study: does the training objective change the left-to-right model? l2r vs fim vs mim vs mim:0.5,fim:0.5.

Claims under test
- MIM (arXiv 2303.07295, section 4): training the backward direction with the agreement regularizer
  improves the *forward* model's perplexity over plain l2r training on the same data.
- FIM (arXiv 2207.14255, section 4, the "FIM-for-free" property): FIM at rate 0.5 leaves left-to-right loss
  unchanged (measured there at equal tokens, models of 50M-6.9B parameters).

Every run trains a reduced tiny model through the real trainer on the default corpus (the stdlib), and every model
is scored the same way: the plain left-to-right loss (stream `l2r`, `<|l2r|>` + raw window) on the same fixed
validation windows, in bits per byte. Two budgets:
- equal tokens: every objective sees the same number of training windows (MIM does ~2x the FLOPs: both directions);
- equal compute: training FLOPs matched to the l2r run (MIM gets 1/2 the steps, the mixture 1/1.5).
Document-aware packing (`--attention-mask document`: no attention across end-of-text, positions restarting per
document) gets rows of its own, l2r and mim at equal tokens (name suffix `_docmask`), scored the same way; their
own streams are measured in the layout they trained on.

Scale caveat: this is a ~1M-parameter model trained on well under a million tokens, on a shared 2-core machine; the
papers' effects were measured at 10^8-10^10 parameters and 10^11 tokens. Treat the outcome as a smoke-scale
replication, not a verdict. The default corpus is tokenized with the 4096-rank vocabulary: at this width a 16k
softmax would cost more than the transformer (ARCHITECTURE.md, Tokenizer); bits/byte keeps the numbers vocabulary-free.

    python experiments/objectives_study.py            # ~25 min on 2 shared cores; writes experiments/results/
    python experiments/objectives_study.py --steps 20 --out /tmp/quick   # smoke run
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from codelm.model import flops_per_token  # noqa: E402
from codelm.objectives import LeftToRight  # noqa: E402
from codelm.train import Trainer, TrainConfig  # noqa: E402

TOKENIZER = "cl100k_base:4096"
MODEL = dict(n_layer=4, n_head=4, d_model=128, context_length=128, tokenizer=TOKENIZER)
COST = {"l2r": 1.0, "fim": 1.0, "mim": 2.0, "mim:0.5,fim:0.5": 1.5}  # forward+backward passes per window


DOCUMENT_MASK_OBJECTIVES = ("l2r", "mim")  # rows trained with --attention-mask document


def runs(steps: int) -> list[dict]:
    """Equal tokens: every objective at `steps`; equal compute: the costlier ones at steps / cost; then the
    document-mask rows at equal tokens."""
    out = [{"objective": o, "budget": "equal_tokens", "steps": steps} for o in COST]
    out += [{"objective": o, "budget": "equal_compute", "steps": round(steps / c)} for o, c in COST.items() if c > 1]
    out += [{"objective": o, "budget": "equal_tokens", "steps": steps, "attention_mask": "document"}
            for o in DOCUMENT_MASK_OBJECTIVES]
    return out


def run_name(run: dict) -> str:
    suffix = "_docmask" if run.get("attention_mask") == "document" else ""
    return f"{run['objective'].replace(':', '').replace(',', '+')}_{run['budget']}{suffix}"


def ensure_corpus(path: Path) -> Path:
    if not (path / "index.json").exists():
        subprocess.run([sys.executable, "-m", "codelm.cli", "data", "prepare", "--out", str(path),
                        "--tokenizer", TOKENIZER], check=True)
    return path


def l2r_validation(trainer: Trainer, step: int) -> dict:
    """The plain left-to-right loss of any model, on the trainer's own fixed validation windows."""
    saved = trainer.objectives
    trainer.objectives = {"l2r": LeftToRight(trainer.tokenizer)}
    try:
        val = trainer.validate()
    finally:
        trainer.objectives = saved
    return {"l2r_only": val["val_l2r"], "l2r_only_bpb": val["val_l2r_bpb"]}


def train_one(run: dict, data: Path, out: Path, args) -> dict:
    name = run_name(run)
    run_dir = out / "runs" / name
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = TrainConfig(data=str(data), out=str(run_dir), preset="tiny", model=dict(MODEL), objective=run["objective"],
                      steps=run["steps"], batch_size=args.batch_size, context_length=MODEL["context_length"],
                      lr=args.lr, warmup_steps=max(1, run["steps"] // 10), eval_every=max(1, run["steps"] // 3),
                      eval_tokens=args.eval_tokens, save_every=0, keep_last=1, log_every=max(1, run["steps"] // 5),
                      precision="fp32", seed=args.seed, threads=args.threads, device="cpu", mim_beta=args.mim_beta,
                      attention_mask=run.get("attention_mask", "causal"))
    trainer = Trainer(cfg, callbacks=[l2r_validation])
    t0 = time.perf_counter()
    summary = trainer.fit()
    wall = time.perf_counter() - t0
    curve = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    curve = [r for r in curve if r["kind"] == "val"]
    flops = flops_per_token(trainer.model_cfg, MODEL["context_length"])["train"] * COST[run["objective"]]
    result = {**run, "name": name, "tokens": trainer.tokens_seen, "train_flops": flops * trainer.tokens_seen,
              "wall_s": round(wall, 1), "checkpoint": summary["checkpoint"],
              "val": {k: v for k, v in summary.items() if k.startswith("val_") or k.startswith("l2r_only")},
              "curve": [{"tokens": r["tokens"], "train_flops": flops * r["tokens"],
                         "l2r_bpb": r["l2r_only_bpb"]} for r in curve]}
    print(f"{name}: l2r {result['val']['l2r_only_bpb']:.4f} bits/byte after {result['tokens']:,} tokens, "
          f"{result['train_flops']:.3g} FLOPs, {wall:.0f}s", flush=True)
    return result


def write_table(results: list[dict], path: Path) -> None:
    base = {r["budget"]: r for r in results if r["objective"] == "l2r" and not r.get("attention_mask")
            }["equal_tokens"]["val"]["l2r_only_bpb"]
    lines = ["| objective | budget | steps | tokens | TFLOPs | l2r bits/byte | vs l2r | own streams, bits/byte |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        bpb = r["val"]["l2r_only_bpb"]
        own = ", ".join(f"{k[4:-4]} {v:.3f}" for k, v in r["val"].items()
                        if k.startswith("val_") and k.endswith("_bpb"))
        mask = " (document mask)" if r.get("attention_mask") == "document" else ""
        lines.append(f"| {r['objective']}{mask} | {r['budget'].replace('_', ' ')} | {r['steps']} | {r['tokens']:,} | "
                     f"{r['train_flops'] / 1e12:.1f} | {bpb:.4f} | {bpb - base:+.4f} | {own} |")
    path.write_text("\n".join(lines) + "\n")


def plot(results: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = {o: c for o, c in zip(COST, ("tab:blue", "tab:orange", "tab:green", "tab:red"))}
    for ax, key, label in ((axes[0], "tokens", "training tokens (windows x length)"),
                           (axes[1], "train_flops", "training FLOPs")):
        for r in results:
            xs = [p[key] for p in r["curve"]]
            ys = [p["l2r_bpb"] for p in r["curve"]]
            style = ":^" if r.get("attention_mask") else "-o" if r["budget"] == "equal_tokens" else "--s"
            mask = ", document mask" if r.get("attention_mask") else ""
            ax.plot(xs, ys, style, color=colors[r["objective"]], label=f"{r['objective']} ({r['budget']}{mask})",
                    ms=4)
        ax.set_xlabel(label)
        ax.set_ylabel("left-to-right validation loss (bits/byte)")
        ax.grid(alpha=0.3)
    axes[0].set_title("equal tokens")
    axes[1].set_title("equal compute")
    axes[1].legend(fontsize=7)
    fig.suptitle("Objectives study: the forward (l2r) model's loss, stdlib corpus, ~1M-param model")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def portable(args: dict) -> dict:
    """Paths inside the repository recorded relative to it, so results carry no machine's directory layout."""
    def rel(v):
        if isinstance(v, str) and v.startswith(str(REPO) + "/"):
            return v[len(str(REPO)) + 1:]
        return v
    return {k: rel(v) for k, v in args.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(REPO / "experiments" / "results" / "objectives_study"))
    p.add_argument("--data", default=str(REPO / "data" / "stdlib-4k"), help="made with the 4096-rank tokenizer")
    p.add_argument("--steps", type=int, default=120, help="steps of the equal-token runs")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--eval-tokens", type=int, default=16384)
    p.add_argument("--threads", type=int, default=1, help="1 is fastest on an oversubscribed shared machine")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--mim-beta", type=float, default=0.1, help="weight of MIM's agreement term (0: ablate it)")
    p.add_argument("--only", default="", help="comma-separated run names to (re)run, e.g. mim_equal_tokens; "
                                              "the others are kept from an earlier results.json if there")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = ensure_corpus(Path(args.data))
    results_path = out / "results.json"
    previous = {r["name"]: r for r in json.loads(results_path.read_text())["runs"]} if results_path.exists() else {}
    results = []
    for run in runs(args.steps):
        name = run_name(run)
        if args.only and name not in args.only.split(","):
            if name in previous:  # keep what an earlier invocation measured
                results.append(previous[name])
            continue
        results.append(train_one(run, data, out, args))
        # write after every run: a long study interrupted half-way keeps what it measured
        tmp = results_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"model": MODEL, "args": portable(vars(args)), "torch": torch.__version__,
                                   "runs": results}, indent=2) + "\n")
        os.replace(tmp, results_path)
    write_table(results, out / "results.md")
    plot(results, out / "objectives_study.png")
    print((out / "results.md").read_text())


if __name__ == "__main__":
    main()

"""Continued pretraining of an "open" left-to-right model with FIM and MIM, against the same budget spent on l2r.

The recipe (issue 18; "Reuse, Don't Retrain", arXiv 2407.07263; MIM, arXiv 2303.07295): take a left-to-right code
model with its own tokenizer, continue its pretraining on your corpus with a replay share of general data, with
`mim:0.5,fim:0.5`, and export it back. Here everything is made locally and small enough for a shared 2-core CPU:

1. an "open model": a byte-level BPE (no FIM tokens, Llama-style <s> </s> <pad>) trained with `tokenizers` on the
   *general* corpus, and a codelm l2r model pretrained on it, exported with `codelm export --hf` and imported back
   with `codelm import-hf --add-tokens fim,mim`, exactly as a downloaded model would be (the added rows are the
   mean of the existing ones; the forward direction keeps the model's <s>);
2. continued pretraining for a fraction of the pretraining tokens on the *own* corpus mixed with a replay share of
   general data, `--recipe continued` (no warmup, cosine to 1/100), two objectives x two seeds, equal windows:
   `mim:0.5,fim:0.5` (MIM's backward direction and FIM's sentinels are new) and `l2r` (the control);
3. before/after, on held-out own-corpus code: forward (left-to-right) bits/byte; the infilling losses (FIM
   sequences with line-start cuts, MIM's backward direction) in bits/byte; and infilling exact match of single
   held-out lines (greedy, one line, whitespace-stripped) by FIM (PSM) and by MIM (meet in the middle).

Corpora: the general corpus is stdlib modules outside a few packages; the own corpus is modules of those packages
(email, http, xml, json, urllib, asyncio, multiprocessing, concurrent, importlib, unittest): a domain shift within
Python. Held-out = whole modules of the own corpus never trained on. No pass rate is reported: single held-out lines
of library modules have no tests to run (HumanEval-infilling needs a model far beyond this size).

    nice -n 10 python experiments/continued_mim.py            # ~15-20 min on 2 loaded cores
    python experiments/continued_mim.py --pretrain-steps 20 --continue-steps 6 --holes 4 --out /tmp/quick  # smoke
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from codelm.loader import load_checkpoint  # noqa: E402
from codelm.cli import main as codelm  # noqa: E402
from codelm.data.shards import write_shards  # noqa: E402
from codelm.generate import SamplingParams  # noqa: E402
from codelm.infill import infill  # noqa: E402
from codelm.objectives import FillInTheMiddle, LeftToRight, MeetInTheMiddle  # noqa: E402
from codelm.tokenizer import get_tokenizer  # noqa: E402
from codelm.train import Trainer, TrainConfig  # noqa: E402

OWN_PACKAGES = ("email", "http", "xml", "json", "urllib", "asyncio", "multiprocessing", "concurrent", "importlib",
                "unittest")
MODEL = dict(n_layer=3, n_head=4, d_model=96, context_length=96)
BPE_VOCAB = 2000  # ids with specials; the model pads to 2048 rows, so the added tokens reuse padding rows
OBJECTIVES = ("mim:0.5,fim:0.5", "l2r")
METRICS = ("forward_bpb", "fim_bpb", "backward_bpb", "fim_exact", "mim_exact")


def corpora(max_docs: int) -> tuple[list[str], list[str], list[str]]:
    """(general, own train, own held out): stdlib modules of 1-30 kB, sorted by path (deterministic)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    general, own = [], []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(p in ("test", "tests", "idlelib", "site-packages", "lib2to3", "tkinter") for p in rel.parts):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if not 1_000 < len(text) < 30_000:
            continue
        (own if rel.parts[0] in OWN_PACKAGES else general).append(text)
    own = own[:max_docs]
    held = own[::5]  # every fifth own module is held out whole
    own_train = [t for i, t in enumerate(own) if i % 5]
    return general[:max_docs], own_train, held


def bpe_dir(path: Path, texts: list[str]) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=BPE_VOCAB, special_tokens=["<s>", "</s>", "<pad>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}))
    return path


def shards(out: Path, tokenizer, train: list[str], val: list[str]) -> Path:
    splits = {"train": tokenizer.encode_batch(train), "val": tokenizer.encode_batch(val)}
    nbytes = {"train": sum(len(t.encode()) for t in train), "val": sum(len(t.encode()) for t in val)}
    return write_shards(out, splits, nbytes, tokenizer, {"source": "experiments/continued_mim.py"})


def validation_bpb(trainer: Trainer) -> dict:
    """Bits/byte on the trainer's fixed validation windows (held-out code), for every model alike: left to right
    (the model's own BOS + raw window); FIM (every document cut at two line starts, PSM or SPM: the loss of whole
    FIM sequences); MIM's backward direction. The last two are infilling losses that move long before exact matches
    appear."""
    saved = trainer.objectives
    tok = trainer.tokenizer
    trainer.objectives = {"l2r": LeftToRight(tok), "fim": FillInTheMiddle(tok, fim_rate=1.0, fim_split="line"),
                          "mim": MeetInTheMiddle(tok)}
    try:
        val = trainer.validate()
    finally:
        trainer.objectives = saved
    return {"forward_bpb": val["val_l2r_bpb"], "fim_bpb": val["val_fim_bpb"], "backward_bpb": val["val_mim_bwd_bpb"]}


def line_holes(texts: list[str], n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """n single-line holes (prefix, middle line, suffix) from held-out modules: non-blank lines of 8-60 characters
    with at least 3 lines of context on each side; each prefix/suffix trimmed to 600 characters around the hole."""
    rng = np.random.default_rng(seed)
    cands = []
    for t in texts:
        lines = t.split("\n")
        for i in range(3, len(lines) - 3):
            if 8 <= len(lines[i].strip()) <= 60 and not lines[i].strip().startswith("#"):
                pre, suf = "\n".join(lines[:i]) + "\n", "\n" + "\n".join(lines[i + 1:])
                cands.append((pre[-600:], lines[i], suf[:600]))
    return [cands[i] for i in sorted(rng.choice(len(cands), size=min(n, len(cands)), replace=False))]


def infill_exact(ckpt, holes, mode: str) -> float:
    caps = dict(ckpt.capabilities, can_fim=True, can_mim=True, fim_formats=["psm"])  # "before": measured anyway
    params = SamplingParams(max_new_tokens=24, stop=["\n"])
    hits = 0
    for pre, mid, suf in holes:
        got = infill(ckpt.model, ckpt.tokenizer, pre, suf, mode=mode, params=params, capabilities=caps).best.text
        hits += got.split("\n")[0].strip() == mid.strip()
    return hits / len(holes)


def evaluate(ckpt_path: Path, trainer: Trainer, holes) -> dict:
    ckpt = load_checkpoint(ckpt_path)
    return {**validation_bpb(trainer), "fim_exact": infill_exact(ckpt, holes, "fim"),
            "mim_exact": infill_exact(ckpt, holes, "mim")}


def base_cfg(args, **kw) -> TrainConfig:
    return TrainConfig(**{**dict(batch_size=args.batch_size, context_length=MODEL["context_length"],
                                 eval_every=0, eval_tokens=args.eval_tokens, save_every=0, keep_last=1,
                                 log_every=10, precision="fp32", device="cpu", threads=args.threads, plot=False,
                                 fim_split="line"), **kw})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(REPO / "experiments" / "results" / "continued_mim"))
    p.add_argument("--work", default="", help="scratch directory (default: OUT/work, deleted at the end)")
    p.add_argument("--max-docs", type=int, default=160)
    p.add_argument("--pretrain-steps", type=int, default=600)
    p.add_argument("--continue-steps", type=int, default=200, help="continued steps (a fraction of pretraining)")
    p.add_argument("--replay", type=float, default=0.25, help="share of general (pretraining) data in the mix")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3, help="pretraining peak; continued runs use it / 3")
    p.add_argument("--eval-tokens", type=int, default=12288)
    p.add_argument("--holes", type=int, default=30)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    work = Path(args.work) if args.work else out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t_start = time.perf_counter()

    general, own, held = corpora(args.max_docs)
    holes = line_holes(held, args.holes)
    tok_dir = bpe_dir(work / "bpe", general)
    tok = get_tokenizer(f"hf:{tok_dir}")
    # 1. the "open model": pretrained l2r on general code, exported, imported back with the FIM/MIM tokens
    general_data = shards(work / "general", tok, general[:-8], general[-8:])
    Trainer(base_cfg(args, data=str(general_data), out=str(work / "pretrain"), preset="tiny",
                     model=dict(MODEL, tokenizer=f"hf:{tok_dir}"), objective="l2r", steps=args.pretrain_steps,
                     lr=args.lr, warmup_steps=max(1, args.pretrain_steps // 10), seed=1337)).fit()
    assert codelm(["export", "--hf", str(work / "open-model"), str(work / "pretrain")]) == 0
    imported = work / "imported"
    assert codelm(["import-hf", str(work / "open-model"), "--add-tokens", "fim,mim", "--out", str(imported)]) == 0
    caps = load_checkpoint(imported).capabilities
    # 2. the continued corpus, made with the imported checkpoint's tokenizer: own code + a replay share of general
    own_bytes = sum(len(t) for t in own)
    replay, size = [], 0
    for t in general:  # general modules until they are `replay` of the mix
        if size >= own_bytes * args.replay / (1 - args.replay):
            break
        replay.append(t)
        size += len(t)
    ctok = get_tokenizer(f"hf:{imported}")
    mix = shards(work / "mix", ctok, own + replay, held)
    pretrain_tokens = args.pretrain_steps * args.batch_size * MODEL["context_length"]
    results = {"before": None, "runs": []}
    for objective in OBJECTIVES:
        for seed in [int(s) for s in args.seeds.split(",")]:
            name = f"{objective.replace(':', '').replace(',', '+')}_seed{seed}"
            trainer = Trainer(base_cfg(args, data=str(mix), out=str(work / name), init_from=str(imported),
                                       recipe="continued", objective=objective, steps=args.continue_steps,
                                       lr=args.lr / 3, seed=seed), explicit={"lr"})
            if results["before"] is None:
                results["before"] = evaluate(imported, trainer, holes)
                print(f"before: {results['before']}", flush=True)
            t0 = time.perf_counter()
            trainer.fit()
            after = evaluate(work / name, trainer, holes)
            run = {"name": name, "objective": objective, "seed": seed, "steps": args.continue_steps,
                   "tokens": trainer.tokens_seen, "wall_s": round(time.perf_counter() - t0, 1), **after}
            results["runs"].append(run)
            print(f"{name}: {run}", flush=True)
    results.update({"model": MODEL, "bpe_vocab": BPE_VOCAB, "added_tokens": caps["added_tokens"],
                    "pretrain_tokens": pretrain_tokens, "continued_tokens": results["runs"][0]["tokens"],
                    "replay_share_bytes": round(size / (size + own_bytes), 3), "holes": len(holes),
                    "docs": {"general": len(general), "own_train": len(own), "own_held_out": len(held)},
                    "args": {k: v for k, v in vars(args).items() if k not in ("out", "work")},
                    "torch": torch.__version__, "wall_s": round(time.perf_counter() - t_start, 1)})
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp, out / "results.json")
    write_table(results, out / "results.md")
    plot(results, out / "continued_mim.png")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    print((out / "results.md").read_text())


def summarize(results: dict) -> dict[str, dict[str, tuple[float, float]]]:
    """objective -> metric -> (mean, half the spread between seeds)."""
    out = {}
    for objective in OBJECTIVES:
        runs = [r for r in results["runs"] if r["objective"] == objective]
        out[objective] = {m: (float(np.mean([r[m] for r in runs])), float(np.ptp([r[m] for r in runs])) / 2)
                          for m in METRICS}
    return out


def write_table(results: dict, path: Path) -> None:
    b = results["before"]
    lines = [f"Continued pretraining: {results['continued_tokens']:,} tokens "
             f"({results['continued_tokens'] / results['pretrain_tokens']:.0%} of the {results['pretrain_tokens']:,}"
             f" pretraining tokens), replay share {results['replay_share_bytes']:.0%} of bytes, "
             f"{results['holes']} held-out line holes; mean of {len(results['runs']) // len(OBJECTIVES)} seeds "
             f"(± half their spread).", "",
             "| model | forward bits/byte | FIM bits/byte | backward bits/byte | FIM exact match | MIM exact match |",
             "|---|---|---|---|---|---|",
             f"| before (imported, tokens added) | {b['forward_bpb']:.4f} | {b['fim_bpb']:.4f} | "
             f"{b['backward_bpb']:.4f} | {b['fim_exact']:.1%} | {b['mim_exact']:.1%} |"]
    for objective, m in summarize(results).items():
        lines.append(f"| continued `{objective}` | " + " | ".join(
            f"{m[k][0]:.4f} ± {m[k][1]:.4f}" if k.endswith("bpb") else f"{m[k][0]:.1%} ± {m[k][1]:.1%}"
            for k in METRICS) + " |")
    lines += ["", "| run | forward bpb | FIM bpb | backward bpb | FIM exact | MIM exact | wall s |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['forward_bpb']:.4f} | {r['fim_bpb']:.4f} | {r['backward_bpb']:.4f} | "
              f"{r['fim_exact']:.1%} | {r['mim_exact']:.1%} | {r['wall_s']} |" for r in results["runs"]]
    path.write_text("\n".join(lines) + "\n")


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 5, figsize=(17, 3.8))
    b = results["before"]
    labels = ("forward bits/byte", "FIM bits/byte", "backward (r2l) bits/byte", "FIM exact match",
              "MIM exact match")
    for ax, metric, label in zip(axes, METRICS, labels):
        names = ["before"] + list(OBJECTIVES)
        for k, objective in enumerate(OBJECTIVES, start=1):
            vals = [r[metric] for r in results["runs"] if r["objective"] == objective]
            ax.scatter([k] * len(vals), vals, color="tab:blue", zorder=3)
            ax.bar(k, np.mean(vals), color="tab:blue", alpha=0.35)
        ax.bar(0, b[metric], color="tab:gray", alpha=0.6)
        ax.set_xticks(range(len(names)), names, fontsize=8)
        ax.set_title(label, fontsize=9)
        if metric.endswith("_bpb"):
            lo = min([b[metric]] + [r[metric] for r in results["runs"]])
            ax.set_ylim(lo * 0.97, None)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle("Continued pretraining of an imported l2r model: mim:0.5,fim:0.5 vs l2r (dots: seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()

"""Training speed: tokens/s and MFU of the real Trainer, against the machine's own matmul peak measured in the
same run (the machine may be shared: ratios, not absolute numbers, are what carry over).

    python benchmarks/bench_train.py                      # tiny, small and the nanoGPT-sized model, fp32 and bf16
    python benchmarks/bench_train.py --models nanogpt --ablate   # what each trainer choice buys (bf16)
    python benchmarks/bench_train.py --check-bf16 300     # bf16 vs 3 fp32 seeds: is bf16-by-default safe?
    python benchmarks/bench_train.py --mim --models tiny,small  # a MIM step against an l2r step: time and memory
    python benchmarks/bench_train.py --peers --models nanogpt   # codelm against litgpt (`make bench-env` first)
    python benchmarks/bench_train.py --attention-mask --models tiny  # document-aware packing's cost (bf16)

The configurations compared in one table train in turn, one step each, round after round (A, B, C, then B, C, A,
...), and each keeps its best step: a neighbour's burst of work on a shared machine then slows every variant alike
instead of whichever happened to run during it. With 2 threads on 2 cores a busy neighbour still stalls every step
(each parallel region waits for the descheduled thread): measure on a quiet machine, or compare ratios only.
Raced variants read ~5-10% below the same trainer alone (each step starts with caches left cold by another model).

The `nanogpt` row is the codelm model at nanoGPT's shape (6 x 384, context 256, batch 8, vocabulary ~8k; SwiGLU 8/3
instead of GELU 4x: same FLOPs); `--peers` races litgpt's own model at that shape in the same run. For the record, one
quiet run on a 2-core AMD EPYC (2026-12): codelm's default 8,074 tokens/s, 70.1% of the best bf16 probe
(1,034 GFLOP/s), 1.60x litgpt at its best (bf16 autocast + torch.compile, 5,051) — rerun it rather than compare with it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import codelm.fast_paths
from codelm.data.shards import write_shards
from codelm.model import flops_per_token, preset_config
from codelm.tokenizer import get_tokenizer
from codelm.train import Trainer, TrainConfig, matmul_peaks

MODELS = {  # name -> (preset, model overrides, batch size)
    "tiny": ("tiny", {}, 8),
    "nanogpt": ("tiny", {"n_layer": 6, "n_head": 6, "d_model": 384, "context_length": 256,
                         "tokenizer": "cl100k_base:8192"}, 8),
    "small": ("small", {}, 4),
}

# --ablate: the optimizations one at a time, each row adding one to the row above it (label -> trainer options), all
# in one process, where malloc keeps freed memory (PROCESSES below measures that one).
# "explicit_attention=False" sets codelm.fast_paths.EXPLICIT_ATTENTION_MAX_T to 0 (SDPA's flash kernel on CPU).
LADDER = {
    "SDPA attention": {"explicit_attention": False},
    "+ explicit CPU attention (default)": {},
    "+ compile": {"compile": True},
}
# --ablate, the same way but one process per row (malloc settings are process-wide), the processes alternating
PROCESSES = {
    "old trainer: glibc malloc, SDPA": {"explicit_attention": False, "keep_freed_memory": False},
    "+ freed memory kept": {"explicit_attention": False},
    "+ explicit CPU attention (default)": {},
    "+ compile": {"compile": True},
}
# --mim: per window, a MIM step reads every window twice; the goal is at most 2.2x an l2r step's time, and peak
# memory within 1.15x of l2r over the same number of sequences (MIM's B windows run 2B sequences). Batch 16 (tiny).
MIM = {
    "l2r, B windows": {"objective": "l2r"},
    "l2r, 2B windows (= MIM's sequences)": {"objective": "l2r", "batch_scale": 2},
    "mim beta 0": {"objective": "mim", "mim_beta": 0.0},
    "mim beta 0.1 (fused loss, default)": {"objective": "mim", "mim_beta": 0.1},
    "mim beta 0.1, direct formula (before)": {"objective": "mim", "mim_beta": 0.1, "mim_direct": True},
}
# --attention-mask: document-aware packing (block-causal mask, per-document positions) against the plain causal mask
DOCUMENT_MASK = {
    "l2r, causal mask": {"objective": "l2r"},
    "l2r, document mask": {"objective": "l2r", "attention_mask": "document"},
    "mim, causal mask": {"objective": "mim"},
    "mim, document mask": {"objective": "mim", "attention_mask": "document"},
}
OPTIONS = {  # the default, then the default with one trainer choice changed
    "default (fused AdamW)": {},
    "optimizer for-loop": {"optimizer_impl": "for-loop"},
    "optimizer foreach": {"optimizer_impl": "foreach"},
    "activation checkpointing": {"activation_checkpointing": True},
}


def random_shards(root: Path, tokenizer_name: str) -> Path:
    """Random tokens: speed does not depend on the text, and the bench needs no prepared corpus."""
    tok = get_tokenizer(tokenizer_name)
    out = root / tokenizer_name.replace(":", "_")
    if not out.exists():
        rng = np.random.default_rng(0)
        docs = {s: [rng.integers(0, tok.eot_id, size=4000) for _ in range(n)] for s, n in (("train", 50), ("val", 4))}
        write_shards(out, docs, {"train": 10**6, "val": 10**5}, tok, {"source": "bench"})
    return out


@contextlib.contextmanager
def attention_kernel(explicit: bool):
    """Explicit CPU attention on (the default) or off (SDPA everywhere) for the duration of one step."""
    default = codelm.fast_paths.EXPLICIT_ATTENTION_MAX_T
    codelm.fast_paths.EXPLICIT_ATTENTION_MAX_T = default if explicit else 0
    try:
        yield
    finally:
        codelm.fast_paths.EXPLICIT_ATTENTION_MAX_T = default


def direct_mim_loss(self, model, batch):
    """The MIM loss as autograd through the formula (the trainer's before the fused loss), for --mim."""
    from codelm.objectives import IGNORE, next_token_loss, total_variation
    fwd, bwd, y_fwd, y_bwd = self.directions(model, batch)
    tv = total_variation(fwd, bwd, y_fwd != IGNORE)
    return next_token_loss(fwd, y_fwd) + next_token_loss(bwd, y_bwd.flip(1)) + self.beta * tv, {}


def make_trainer(name: str, precision: str, root: Path, opts: dict) -> Trainer:
    preset, model, batch = MODELS[name]
    opts = dict(opts)
    batch = opts.pop("batch_size", batch) * opts.pop("batch_scale", 1)
    direct = opts.pop("mim_direct", False)
    opts.setdefault("compile", False)  # a row compiles only when it says so (None: the default's auto rule)
    cfg_model = preset_config(preset, **model)
    cfg = TrainConfig(data=str(random_shards(root, cfg_model.tokenizer)), out=str(root / f"run-{name}"),
                      preset=preset, model=dict(model), batch_size=batch, steps=1000, warmup_steps=10,
                      precision=precision, eval_every=0, save_every=0, seed=0, **opts)
    trainer = Trainer(cfg)
    trainer.auto_compile(cfg.steps)  # a row with compile None gets what a 1000-step run gets by default
    if direct:
        mim = trainer.objectives["mim"]
        mim.loss = direct_mim_loss.__get__(mim)
    return trainer


def race(name: str, variants: dict[str, tuple[str, dict]], root: Path, steps: int) -> list[dict]:
    """Train every variant (label -> (precision, options)) in turn, one step each, `steps` rounds; best step each."""
    # a throwaway step first: a trainer whose parameters were allocated before malloc had settled (the first Trainer
    # sets it up, see keep_freed_memory) ran ~10% slower than the same trainer built after
    keep = all(opts.get("keep_freed_memory", True) for _, opts in variants.values())
    make_trainer(name, "fp32", root, {"keep_freed_memory": keep}).train_step()
    runners = {}
    for label, (precision, opts) in variants.items():
        opts = dict(opts)
        explicit = opts.pop("explicit_attention", True)
        trainer = make_trainer(name, precision, root, opts)
        t0 = time.perf_counter()
        with attention_kernel(explicit):
            trainer.train_step()  # warm-up: allocator, kernel choice, compilation
        runners[label] = (trainer, explicit, time.perf_counter() - t0)
    best = {label: float("inf") for label in runners}
    labels = list(runners)
    for round_ in range(steps):
        for label in labels[round_ % len(labels):] + labels[:round_ % len(labels)]:  # who goes first rotates
            trainer, explicit, _ = runners[label]
            with attention_kernel(explicit):
                t0 = time.perf_counter()
                trainer.train_step()
                best[label] = min(best[label], time.perf_counter() - t0)
    rows = []
    for label, (trainer, _, first_step) in runners.items():
        tokens = trainer.cfg.batch_size * trainer.cfg.grad_accum * trainer.context  # window tokens (MIM: read twice)
        rows.append({"model": name, "precision": variants[label][0], "variant": label, "tok_s": tokens / best[label],
                     "first_step_s": first_step,
                     "flops_per_token": flops_per_token(trainer.model_cfg, trainer.context)["train"]
                     * (2 if trainer.cfg.objective == "mim" else 1)})  # MIM reads every window twice
    return rows


def race_processes(name: str, variants: dict[str, dict], steps: int, rounds: int = 3) -> list[dict]:
    """Each variant (label -> bf16 trainer options) in a process of its own, `steps` steps; the variants' processes
    alternate for `rounds` rounds and each keeps its best."""
    best: dict[str, dict] = {}
    labels = list(variants)
    for round_ in range(rounds):
        for label in labels[round_ % len(labels):] + labels[:round_ % len(labels)]:
            spec = json.dumps({"model": name, "label": label, "options": variants[label], "steps": steps})
            out = subprocess.run([sys.executable, __file__, "--solo", spec], capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.splitlines()[-1])
            if label not in best or row["tok_s"] > best[label]["tok_s"]:
                best[label] = row
    return [best[label] for label in labels]


PEERS = {  # label -> (runner, options): codelm's trainer, or litgpt's own model (benchmarks/litgpt_peer.py)
    "codelm default": ("codelm", {"compile": None}),
    "codelm --compile true": ("codelm", {"compile": True}),
    "litgpt bf16 autocast": ("litgpt", {"compile": False}),
    "litgpt bf16 autocast + torch.compile": ("litgpt", {"compile": True}),
}


def race_peers(name: str, steps: int, rounds: int, peer_python: str) -> list[dict]:
    """codelm and litgpt at the same shape and batch, bf16, one process per variant, alternating; best of each."""
    preset, model, batch = MODELS[name]
    cfg = preset_config(preset, **model)
    peer = {"n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_embd": cfg.d_model, "block_size": cfg.context_length,
            "vocab_size": cfg.vocab_size, "intermediate_size": cfg.ffn_hidden, "batch": batch, "steps": steps,
            "precision": "bf16"}
    best: dict[str, dict] = {}
    labels = list(PEERS)
    for round_ in range(rounds):
        for label in labels[round_ % len(labels):] + labels[:round_ % len(labels)]:
            runner, options = PEERS[label]
            if runner == "codelm":
                spec = json.dumps({"model": name, "label": label, "options": options, "steps": steps})
                cmd = [sys.executable, __file__, "--solo", spec]
            else:
                cmd = [peer_python, str(Path(__file__).with_name("litgpt_peer.py")), json.dumps({**peer, **options})]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.splitlines()[-1])
            row.update(model=name, precision="bf16", variant=label,
                       flops_per_token=flops_per_token(cfg, cfg.context_length)["train"])
            if label not in best or row["tok_s"] > best[label]["tok_s"]:
                best[label] = row
    return [best[label] for label in labels]


def solo(spec: str) -> None:
    """--solo: one variant in this process; its row as the last line of stdout."""
    spec = json.loads(spec)
    logging.basicConfig(level=logging.WARNING)
    root = Path(tempfile.mkdtemp(prefix="bench_train-"))
    row = race(spec["model"], {spec["label"]: ("bf16", spec["options"])}, root, spec["steps"])[0]
    row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(row))


def check_bf16(steps: int, root: Path, data: str) -> dict:
    """Same seed in bf16, three seeds in fp32; validation loss after `steps` steps of a 4 x 256 model."""
    def val_loss(precision, seed):
        cfg = TrainConfig(data=data, out=str(root / f"chk-{precision}-{seed}"), preset="tiny",
                          model={"n_layer": 4, "d_model": 256}, batch_size=8, context_length=128, steps=steps,
                          lr=2e-3, warmup_steps=20, eval_every=0, eval_tokens=16384, save_every=0, log_every=50,
                          precision=precision, seed=seed, plot=False)
        return Trainer(cfg).fit()["val_l2r"]
    fp32 = [val_loss("fp32", s) for s in (0, 1, 2)]
    bf16 = val_loss("bf16", 0)
    spread = max(fp32) - min(fp32)
    return {"steps": steps, "fp32_seeds": fp32, "bf16_seed0": bf16, "fp32_spread": spread,
            "bf16_minus_fp32_seed0": bf16 - fp32[0], "within_spread": min(fp32) <= bf16 <= max(fp32)}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or "unknown"


def describe_peaks(kernels: dict) -> str:
    return ", ".join(f"{str(dtype).replace('torch.', '').replace('float32', 'fp32').replace('bfloat16', 'bf16')} "
                     f"{kernel} {flops / 1e9:.0f} GFLOP/s" for (dtype, kernel), flops in kernels.items())


def with_ratios(rows: list[dict], to_previous: bool) -> list[dict]:
    """`ratio`: each row's tokens/s over the row above it (the ladder) or over the first row (options)."""
    for i, r in enumerate(rows):
        r["ratio"] = r["tok_s"] / rows[i - 1 if to_previous else 0]["tok_s"] if i else None
    return rows


def print_table(rows: list[dict], peak: dict) -> None:
    """MFU against the same run's matmul peak."""
    print(f"{'model':8s} {'precision':9s} {'variant':36s} {'tokens/s':>9s} {'GFLOP/s':>8s} {'MFU':>6s} {'ratio':>6s}")
    for r in rows:
        achieved = r["tok_s"] * r["flops_per_token"]
        ratio = f"{r['ratio']:.2f}" if r.get("ratio") else ""
        print(f"{r['model']:8s} {r['precision']:9s} {r['variant']:36s} {r['tok_s']:>9,.0f} {achieved / 1e9:>8.0f} "
              f"{100 * achieved / peak[r['precision']]:>5.1f}% {ratio:>6s}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="tiny,nanogpt,small", help="comma-separated: tiny, nanogpt, small")
    p.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16")
    p.add_argument("--steps", type=int, default=6, help="timed rounds per table (best step of each variant counts)")
    p.add_argument("--rounds", type=int, default=3, help="--mim, --peers, --ablate: rounds of alternating processes "
                                                         "(best of each variant counts)")
    p.add_argument("--ablate", action="store_true", help="bf16: each speed-up in turn (ratio over the row above; "
                                                        "in one process, then one process each), and other trainer "
                                                        "options (ratio over the default)")
    p.add_argument("--mim", action="store_true", help="bf16: MIM steps against l2r steps, per window, with peak "
                                                      "resident memory (one process per variant, alternating)")
    p.add_argument("--peers", action="store_true", help="bf16: codelm against litgpt's model at the same shape "
                                                        "(ratio over litgpt at its best)")
    p.add_argument("--attention-mask", action="store_true", help="bf16: document-aware packing against the causal "
                                                                 "mask, l2r and mim (ratio over causal l2r)")
    p.add_argument("--peer-python", default=".venv-bench/bin/python", help="the interpreter that has litgpt")
    p.add_argument("--batch", type=int, default=0, help="batch size (windows) for --mim (default: 16 tiny, 4 small)")
    p.add_argument("--check-bf16", type=int, default=0, metavar="STEPS", help="run the bf16-vs-fp32 check")
    p.add_argument("--data", default="data/stdlib", help="shards for --check-bf16")
    p.add_argument("--solo", help=argparse.SUPPRESS)  # internal: one --ablate process
    args = p.parse_args()
    if args.solo:
        return solo(args.solo)
    logging.basicConfig(level=logging.WARNING)
    root = Path(tempfile.mkdtemp(prefix="bench_train-"))
    cpu = torch.device("cpu")
    kernels = matmul_peaks(cpu, reps=10)
    print(f"CPU {cpu_model()}; threads {torch.get_num_threads()}; torch {torch.__version__}")
    print(f"matmul peak (best of 10, 1024^3): {describe_peaks(kernels)}")
    rows = []
    for name in args.models.split(","):
        if args.peers:  # ratio: over litgpt at its best
            peer_rows = race_peers(name, args.steps, args.rounds, args.peer_python)
            best_peer = max((r for r in peer_rows if r["variant"].startswith("litgpt")), key=lambda r: r["tok_s"])
            for r in peer_rows:
                r["ratio"] = r["tok_s"] / best_peer["tok_s"]
            rows += peer_rows
            continue
        if args.mim:  # ratio: over l2r with the same windows
            batch = args.batch or {"tiny": 16}.get(name, MODELS[name][2])
            # as users get them: --compile unset, so the steps of a long run compile (blocks and loss kernels)
            variants = {k: dict(v, batch_size=batch, compile=None) for k, v in MIM.items()}
            rows += with_ratios(race_processes(name, variants, args.steps, args.rounds), False)
            continue
        if args.attention_mask:  # ratio: over causal l2r
            rows += with_ratios(race(name, {k: ("bf16", o) for k, o in DOCUMENT_MASK.items()}, root, args.steps),
                                False)
            continue
        if args.ablate:  # ratio: over the row above (ladders), over the default (options)
            # the options first: a process that has compiled (the ladder's last row) runs eager steps less evenly
            options = with_ratios(race(name, {k: ("bf16", o) for k, o in OPTIONS.items()}, root, args.steps), False)
            rows += with_ratios(race(name, {k: ("bf16", o) for k, o in LADDER.items()}, root, args.steps), True)
            rows += options
            rows += with_ratios(race_processes(name, PROCESSES, args.steps, args.rounds), True)
        else:  # ratio: bf16 over fp32
            rows += with_ratios(race(name, {p: (p, {}) for p in args.precisions.split(",")}, root, args.steps), False)
    at_end = matmul_peaks(cpu, reps=10)
    print(f"matmul peak at the end: {describe_peaks(at_end)}")
    # the roof of each precision: its fastest kernel (fp32: BLAS or oneDNN), at the better of the two probes
    peak = {name: max(max(k[key] for key in k if key[0] == dtype) for k in (kernels, at_end))
            for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    print(f"MFU below is against fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s and bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s "
          f"(each precision's fastest kernel, best probe)")
    print_table(rows, peak)
    if args.mim:
        print("ratio = tokens/s over l2r's at B windows (a MIM window is read in both directions); peak resident "
              "memory per process: " + ", ".join(f"{r['variant']} {r['peak_rss_mb']:,.0f} MB" for r in rows))
    if any(r["first_step_s"] > 5 for r in rows):
        print("first (compiling) steps: " + ", ".join(f"{r['model']} {r['variant']} {r['first_step_s']:.0f} s"
                                                       for r in rows if r["first_step_s"] > 5))
    if args.check_bf16:
        print(json.dumps(check_bf16(args.check_bf16, root, args.data), indent=2))


if __name__ == "__main__":
    main()

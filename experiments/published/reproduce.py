"""Reproduce published numbers of open code models with codelm's evaluation, and print ours beside theirs.

    python experiments/published/reproduce.py --model phi-1=/models/phi-1 \
        --model deepseek-coder-1.3b-base=/models/deepseek-coder-1.3b-base [--backend auto] [--out runs/published]

Model weights are never downloaded: give each model's local Hugging Face directory as NAME=DIR (names from TABLE).
Each row runs `codelm eval` with the paper's protocol (greedy pass@1 unless the row says otherwise; n=200, T=0.8,
top-p 0.95 for pass@10/100 rows) and resumes from --out. A row whose paper number is not recorded here prints "-"
for it: add it to TABLE from the paper rather than from memory. --limit N (first N tasks) and --max-new-tokens are
for trying the script on small models; a limited run is not comparable with the paper and says so.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Row:
    model: str
    benchmark: str       # humaneval | mbpp | infilling-single-line
    metric: str          # pass@1 | pass@10 | pass@100
    published: float | None  # percent, as the paper prints it
    source: str
    mbpp_format: str = "bigcode"
    sampled: bool = False  # n=200, T=0.8, top-p 0.95 (Chen et al. 2021) instead of greedy


TABLE = [
    Row("phi-1", "humaneval", "pass@1", 50.6, "Gunasekar et al. 2023, Textbooks Are All You Need, Table 1"),
    Row("phi-1", "mbpp", "pass@1", 55.5, "Gunasekar et al. 2023, Table 1"),
    Row("deepseek-coder-1.3b-base", "humaneval", "pass@1", 34.8, "Guo et al. 2024, DeepSeek-Coder"),
    Row("deepseek-coder-1.3b-base", "mbpp", "pass@1", 46.2, "Guo et al. 2024, DeepSeek-Coder (few-shot)", mbpp_format="3shot"),
    Row("starcoder2-3b", "humaneval", "pass@1", 31.7, "Lozhkov et al. 2024, StarCoder 2"),
    Row("starcoder2-3b", "mbpp", "pass@1", 57.4, "Lozhkov et al. 2024, StarCoder 2"),
    Row("santacoder", "humaneval", "pass@1", None, "Allal et al. 2023, SantaCoder (add the number from the paper)"),
    Row("santacoder", "humaneval", "pass@100", None, "Allal et al. 2023 (pass@100, n=200 T=0.8)", sampled=True),
    Row("santacoder", "infilling-single-line", "pass@1", None, "Allal et al. 2023 (single-line infilling)"),
    Row("codellama-7b", "infilling-single-line", "pass@1", None,
        "Rozière et al. 2023, Code Llama, infilling table (add the number from the paper)"),
]


def eval_argv(row: Row, model_dir: str, out: Path, args) -> list[str]:
    """The `codelm eval` command line of a row's protocol."""
    if row.benchmark == "infilling-single-line":
        argv = ["eval", "infilling", model_dir, "--set", "single-line", "--mode", "fim"]
    else:
        argv = ["eval", row.benchmark, model_dir]
        if row.benchmark == "mbpp":
            argv += ["--mbpp-format", row.mbpp_format]
    if row.sampled:
        argv += ["-k", "1,10,100", "--n", str(args.n or 200), "--temperature", "0.8", "--top-p", "0.95"]
    else:
        argv += ["-k", "1"]
    argv += ["--backend", args.backend, "--dtype", args.dtype, "--device", args.device, "--output", str(out)]
    if args.limit:
        argv += ["--limit", str(args.limit)]
    if args.max_new_tokens:
        argv += ["--max-new-tokens", str(args.max_new_tokens)]
    return argv


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=[], metavar="NAME=DIR",
                        help=f"a model's local directory; NAME one of {sorted({r.model for r in TABLE})}")
    parser.add_argument("--out", default="runs/published", help="where each evaluation goes (resumed)")
    parser.add_argument("--backend", default="auto", help="model backend for codelm eval (default auto)")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--limit", type=int, help="first N tasks only (a trial: not comparable with the paper)")
    parser.add_argument("--max-new-tokens", type=int, help="override the protocol's 512 (trials only)")
    parser.add_argument("--n", type=int, help="samples for the sampled rows (default 200)")
    args = parser.parse_args(argv)
    models = {}
    for spec in args.model:
        name, sep, path = spec.partition("=")
        if not sep or name not in {r.model for r in TABLE}:
            print(f"codelm: error: --model {spec!r}: expected NAME=DIR with NAME one of "
                  f"{', '.join(sorted({r.model for r in TABLE}))}", file=sys.stderr)
            return 2
        models[name] = path
    if not models:
        print("codelm: error: give at least one --model NAME=DIR (weights are never downloaded)", file=sys.stderr)
        return 2

    from evals.cli import main as codelm_eval

    lines = []
    for row in (r for r in TABLE if r.model in models):
        out = Path(args.out) / row.model / f"{row.benchmark}-{row.metric}"
        code = codelm_eval(eval_argv(row, models[row.model], out, args))
        ours = None
        if code in (0, 1) and (out / "summary.json").is_file():
            value = json.loads((out / "summary.json").read_text()).get(row.metric)
            ours = None if value is None else 100 * value
        lines.append((row, ours, code))
    trial = " (TRIAL: --limit/--max-new-tokens differ from the paper's protocol)" if args.limit or \
        args.max_new_tokens else ""
    print(f"\nours beside the published numbers{trial}")
    print(f"{'model':<26}{'benchmark':<24}{'metric':<10}{'ours':>8}{'paper':>8}  source")
    for row, ours, code in lines:
        mine = f"{ours:.1f}" if ours is not None else f"err {code}"
        paper = f"{row.published:.1f}" if row.published is not None else "-"
        print(f"{row.model:<26}{row.benchmark:<24}{row.metric:<10}{mine:>8}{paper:>8}  {row.source}")
    return 0 if all(ours is not None for _, ours, _ in lines) else 1


if __name__ == "__main__":
    sys.exit(main())

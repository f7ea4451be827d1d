"""Reproduce published numbers of open code models with codelm's evaluation, and print ours beside theirs.

    python experiments/published/reproduce.py --model phi-1=/models/phi-1 \
        --model deepseek-coder-1.3b-base=/models/deepseek-coder-1.3b-base [--backend auto] [--out runs/published]

Model weights are never downloaded: give each model's local Hugging Face directory as NAME=DIR (names from TABLE).
Each row runs `codelm eval` with the paper's protocol (greedy unless the row says otherwise: n=200 with the
paper's temperature, top-p 0.95, for sampled rows) and resumes from --out; rows of one protocol share one run. A row whose paper number is not recorded here prints "-"
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
    metric: str          # pass@1 | pass@10 | pass@100 | exact_match | base_pass_rate (a summary.json key)
    published: float | None  # percent, as the paper prints it
    source: str          # the paper and its table (or where its number is published)
    mbpp_format: str = "bigcode"
    plus: bool = False   # EvalPlus's HumanEval+/MBPP+ task set and tests (base_pass_rate: its base tests only)
    n: int = 1           # samples per task; 1 with temperature 0 is greedy
    temperature: float = 0.0

    @property
    def protocol(self) -> str:
        """The run this row reads: rows with the same protocol share one evaluation (resumed, not repeated)."""
        sampling = "greedy" if self.temperature == 0 else f"n{self.n}-t{self.temperature:g}"
        fmt = f"-{self.mbpp_format}" if self.benchmark == "mbpp" else ""
        return f"{self.benchmark}{'-plus' if self.plus else ''}{fmt}-{sampling}"


SANTACODER = "Allal et al. 2023, SantaCoder (arXiv 2301.03988), final model; the same numbers in bigcode/santacoder's model card"
TABLE = [
    Row("phi-1", "humaneval", "pass@1", 50.6, "Gunasekar et al. 2023, Textbooks Are All You Need, Table 1"),
    Row("phi-1", "mbpp", "pass@1", 55.5, "Gunasekar et al. 2023, Table 1"),
    Row("deepseek-coder-1.3b-base", "humaneval", "pass@1", 34.8, "Guo et al. 2024, DeepSeek-Coder"),
    Row("deepseek-coder-1.3b-base", "mbpp", "pass@1", 46.2, "Guo et al. 2024, DeepSeek-Coder (few-shot)", mbpp_format="3shot"),
    # StarCoder 2 (Lozhkov et al. 2024) reports HumanEval(+) and MBPP(+) through EvalPlus, greedy; HumanEval 31.7 and
    # HumanEval+ 27.4 are also reprinted in Qwen2.5-Coder's Table 5. Its MBPP is EvalPlus's MBPP (399 tasks then;
    # today's MBPP+ v0.2.0 has 378), so the row runs --plus and reads the base tests' pass rate.
    Row("starcoder2-3b", "humaneval", "pass@1", 31.7, "Lozhkov et al. 2024, StarCoder 2, HumanEval(+)/MBPP(+) table"),
    Row("starcoder2-3b", "humaneval", "pass@1", 27.4, "Lozhkov et al. 2024 (HumanEval+); Qwen2.5-Coder Table 5",
        plus=True),
    Row("starcoder2-3b", "mbpp", "base_pass_rate", 57.4, "Lozhkov et al. 2024 (EvalPlus's MBPP, base tests)",
        plus=True),
    # SantaCoder's HumanEval is MultiPL-E's Python HumanEval with the Codex protocol: n=200, T=0.2 for pass@1,
    # T=0.8 for pass@10/100, top-p 0.95. Its infilling number is exact match on HumanEval single-line infilling.
    Row("santacoder", "humaneval", "pass@1", 18.0, SANTACODER, n=200, temperature=0.2),
    Row("santacoder", "humaneval", "pass@10", 29.0, SANTACODER, n=200, temperature=0.8),
    Row("santacoder", "humaneval", "pass@100", 49.0, SANTACODER, n=200, temperature=0.8),
    Row("santacoder", "infilling-single-line", "exact_match", 44.0, SANTACODER + " (single-line exact match, Python)"),
    Row("codellama-7b", "infilling-single-line", "pass@1", None,
        "Rozière et al. 2023, Code Llama, infilling table (HumanEval single-line, PSM): add the number from the paper"),
]


def eval_argv(row: Row, model_dir: str, out: Path, args) -> list[str]:
    """The `codelm eval` command line of a row's protocol."""
    if row.benchmark == "infilling-single-line":
        argv = ["eval", "infilling", model_dir, "--set", "single-line", "--mode", "fim"]
    else:
        argv = ["eval", row.benchmark, model_dir]
        if row.benchmark == "mbpp":
            argv += ["--mbpp-format", row.mbpp_format]
        if row.plus:
            argv += ["--plus"]
    if row.temperature > 0:
        n = args.n or row.n
        ks = ",".join(str(k) for k in (1, 10, 100) if k <= n)  # a trial's smaller n estimates the k it can
        argv += ["-k", ks, "--n", str(n), "--temperature", f"{row.temperature:g}", "--top-p", "0.95"]
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
    parser.add_argument("--n", type=int, help="samples for the sampled rows (default: the paper's, 200)")
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

    lines, codes = [], {}
    for row in (r for r in TABLE if r.model in models):
        out = Path(args.out) / row.model / row.protocol
        if out not in codes:  # rows of one protocol read one run
            codes[out] = codelm_eval(eval_argv(row, models[row.model], out, args))
        code = codes[out]
        ours = None
        if code in (0, 1) and (out / "summary.json").is_file():
            value = json.loads((out / "summary.json").read_text()).get(row.metric)
            ours = None if value is None else 100 * value
        lines.append((row, ours, code))
    trial = " (TRIAL: --limit/--max-new-tokens/--n differ from the paper's protocol)" if args.limit or \
        args.max_new_tokens or args.n else ""
    print(f"\nours beside the published numbers{trial}")
    print(f"{'model':<26}{'benchmark':<24}{'metric':<16}{'ours':>8}{'paper':>8}  source")
    for row, ours, code in lines:
        mine = f"{ours:.1f}" if ours is not None else "n/a" if code in (0, 1) else f"err {code}"
        paper = f"{row.published:.1f}" if row.published is not None else "-"
        bench = row.benchmark + ("+" if row.plus else "")
        print(f"{row.model:<26}{bench:<24}{row.metric:<16}{mine:>8}{paper:>8}  {row.source}")
    return 0 if all(code in (0, 1) for _, _, code in lines) else 1


if __name__ == "__main__":
    sys.exit(main())

"""`codelm eval`: score sample files or evaluate a model on HumanEval, MBPP and HumanEval-infilling.

  codelm eval humaneval --samples samples.jsonl [--output DIR] [-k 1,10,100]
  codelm eval mbpp MODEL [--mbpp-format bigcode|3shot] [-k 1] [--limit 50]
  codelm eval infilling MODEL --set single-line --mode fim|mim [--n 10 -k 1,10]

codelm/cli.py calls add_eval_parser(subparsers) lazily; `python -m evals.cli eval ...` does the same standalone.
Imports stay light here (no torch, no sandbox) so that `--help` is instant; the work is imported in run_eval_command.
Exit codes: 0 done, 1 some samples could not be scored (sandbox infrastructure errors), 2 bad input.
"""

import argparse
import re
import sys
from pathlib import Path

from codelm.terms import FIM, INFILL_MODES

BENCHMARKS = ("humaneval", "mbpp", "infilling")
INFILLING_SETS = ("single-line", "multi-line", "random-span", "random-span-light")


def parse_ks(values: list[str] | None) -> list[int]:
    """-k 1 -k 10, or -k 1,10,100."""
    ks = []
    for value in values or ["1"]:
        for part in value.split(","):
            if not part.strip().isdigit() or int(part) < 1:
                raise argparse.ArgumentTypeError(f"-k takes positive integers, got {part!r}")
            ks.append(int(part))
    return sorted(set(ks))


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("eval", help="evaluate a model or score samples on a code benchmark",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    benchmarks = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name, help_text in [("humaneval", "HumanEval, 164 problems (Chen et al. 2021)"),
                            ("mbpp", "MBPP test split, tasks 11-510 (Austin et al. 2021)"),
                            ("infilling", "HumanEval-infilling (Bavarian et al. 2022)")]:
        sub = benchmarks.add_parser(name, help=help_text, description=help_text)
        _add_common_args(sub)
        if name in ("humaneval", "mbpp"):
            sub.add_argument("--plus", action="store_true",
                             help="HumanEval+ / MBPP+ (evalplus): differential tests on many more inputs")
        if name == "mbpp":
            sub.add_argument("--mbpp-format", choices=("bigcode", "3shot"), default="bigcode",
                             help="prompt: bigcode's docstring with one test (default) "
                                  "or the paper's 3-shot [BEGIN]/[DONE]")
        if name == "infilling":
            sub.add_argument("--set", dest="infilling_set", choices=INFILLING_SETS, default="single-line",
                             help="which infilling benchmark (default single-line)")
            sub.add_argument("--mode", choices=INFILL_MODES, default=FIM,
                             help="decoding: fill-in-the-middle prompt or meet-in-the-middle (default fim)")
        sub.set_defaults(func=run_eval_command)
    compare = benchmarks.add_parser("compare", help="compare evaluation output directories (Markdown + HTML + chart)")
    compare.add_argument("runs", nargs="+", metavar="DIR", help="directories written by `codelm eval`")
    compare.add_argument("--output", metavar="DIR", default="runs/eval/compare", help="where the report goes")
    compare.set_defaults(func=run_compare_command)
    return parser


def run_compare_command(args) -> int:
    from evals.compare import compare
    from evals.data import EvalInputError

    try:
        paths = compare(args.runs, args.output)
    except EvalInputError as e:
        print(f"codelm eval: error: {e}", file=sys.stderr)
        return 2
    print(f"report: {paths['markdown']}, {paths['html']}", file=sys.stderr)
    return 0


def _add_common_args(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("model", nargs="?", metavar="MODEL", help="checkpoint, run directory or Hugging Face model dir")
    sub.add_argument("--samples", metavar="FILE", help="score completions from a JSONL file (task_id, completion) "
                                                       "instead of generating")
    sub.add_argument("--output", metavar="DIR", help="results directory; an existing one is resumed")
    sub.add_argument("-k", action="append", metavar="K", help="report pass@K; repeat or give a comma list (default 1)")
    sub.add_argument("--n", type=int, help="samples per task (default: 1 with -k 1 alone, else the largest k)")
    sub.add_argument("--temperature", type=float, help="default 0 (greedy) for n=1, else 0.2 for pass@1 only, "
                                                       "0.8 for pass@10/100 (Codex paper)")
    sub.add_argument("--top-p", type=float, help="nucleus sampling (default 0.95 when sampling)")
    sub.add_argument("--max-new-tokens", type=int, default=512, help="per completion (default 512)")
    sub.add_argument("--batch-size", type=int, default=8, help="prompts per model call (default 8)")
    sub.add_argument("--limit", type=int, help="only the first N tasks")
    sub.add_argument("--tasks", help="only these task ids, comma-separated")
    sub.add_argument("--seed", type=int, default=0, help="base seed; each sample's seed derives from it (default 0)")
    sub.add_argument("--data-dir", help="directory holding mbpp/ and humaneval-infilling/ "
                                        "(default $CODELM_DATA_DIR, then shared/data near the repo, then the hub)")
    sub.add_argument("--workers", type=int, help="programs run at once (default: the sandbox's choice)")
    sub.add_argument("--backend", choices=("local", "docker"), default="local", help="sandbox backend")
    sub.add_argument("--timeout", type=float, help="CPU seconds per program (default 3; MBPP 10)")
    sub.add_argument("--progress-every", type=float, default=10.0, help=argparse.SUPPRESS)
    api = sub.add_argument_group("model behind an OpenAI-compatible completions API (vLLM, llama.cpp, TGI, "
                                 "codelm serve)")
    api.add_argument("--endpoint", metavar="URL", help="e.g. http://127.0.0.1:8000/v1 (instead of MODEL)")
    api.add_argument("--model", dest="endpoint_model", metavar="NAME", help="the model name the server expects")
    api.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    api.add_argument("--rate-limit", type=float, help="at most this many requests per second")
    api.add_argument("--retries", type=int, default=6, help="retries on 429/5xx with backoff (default 6)")
    api.add_argument("--fim-template", help="raw FIM prompt with {prefix} and {suffix} instead of the suffix field")


def load_benchmark(args):
    if getattr(args, "plus", False):
        from evals import evalplus
        if args.benchmark == "humaneval":
            return evalplus.load_humaneval_plus(args.data_dir)
        return evalplus.load_mbpp_plus(args.data_dir, prompt_format=args.mbpp_format)
    if args.benchmark == "humaneval":
        from evals import humaneval
        return humaneval.load(args.data_dir)
    if args.benchmark == "mbpp":
        from evals import mbpp
        return mbpp.load(args.data_dir, prompt_format=args.mbpp_format)
    from evals import infilling
    return infilling.load(args.infilling_set, args.data_dir, mode=args.mode)


def default_output(args, benchmark_name: str) -> Path:
    slug = benchmark_name.replace("/", "-")
    if args.samples:
        samples = Path(args.samples)
        return samples.with_name(f"{samples.name.removesuffix('.gz').removesuffix('.jsonl')}_{slug}_results")
    name = args.model or f"{args.endpoint_model or 'default'}-endpoint"
    model = re.sub(r"[^\w.-]+", "_", Path(name.rstrip("/")).name)
    return Path("runs") / "eval" / f"{slug}-{model}"


def run_eval_command(args) -> int:
    from codelm.errors import UserError
    from evals.data import EvalInputError

    try:
        return _run(args)
    except (EvalInputError, UserError) as e:  # a bad sample file, or a missing/corrupt checkpoint
        print(f"codelm eval: error: {e}", file=sys.stderr)
        return 2


def _run(args) -> int:
    from evals import runner
    from evals.data import EvalInputError

    if args.endpoint and args.model:
        raise EvalInputError("give either MODEL or --endpoint URL --model NAME (not both)")
    if bool(args.model or args.endpoint) == bool(args.samples):
        raise EvalInputError("give either MODEL or --samples FILE (not both); for a served model, "
                              "--endpoint URL --model NAME stands for MODEL")
    try:
        ks = parse_ks(args.k)
    except argparse.ArgumentTypeError as e:
        raise EvalInputError(str(e)) from None
    benchmark = load_benchmark(args)
    output = Path(args.output) if args.output else default_output(args, benchmark.name)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    common = dict(ks=ks, limit=args.limit, tasks=tasks, workers=args.workers, backend=args.backend,
                  cpu_s=args.timeout, progress_every=args.progress_every)
    if args.samples:
        summary = runner.evaluate_samples(benchmark, args.samples, output, **common)
    else:
        from evals.models import load_model

        sampling = runner.resolve_sampling(ks, args.n, args.temperature, args.top_p, args.max_new_tokens)
        if args.endpoint:
            model = load_model(args.endpoint_model, endpoint=args.endpoint, concurrency=args.concurrency,
                               retries=args.retries, rate_limit=args.rate_limit, fim_template=args.fim_template)
        else:
            model = load_model(args.model)
        summary = runner.evaluate_model(benchmark, model, output, sampling, seed=args.seed,
                                        batch_size=args.batch_size, **common)
    print(f"results: {output}/results.jsonl, summary: {output}/summary.json", file=sys.stderr)
    return 1 if summary["counts"]["not_scored"] else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="codelm")
    add_eval_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

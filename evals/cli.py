"""`codelm eval`: score sample files or evaluate a model on HumanEval, MBPP and HumanEval-infilling.

  codelm eval humaneval --samples samples.jsonl [--output DIR] [-k 1,10,100]
  codelm eval mbpp MODEL [--mbpp-format bigcode|3shot] [-k 1] [--limit 50]
  codelm eval infilling MODEL --set single-line --mode fim|mim [--n 10 -k 1,10]
  codelm eval humaneval-x MODEL --language cpp|java|js|go|rust|all [--set single-line --mode fim|mim]

The options are one dataclass, EvalConfig (defaults here and nowhere else; `--config FILE` for a file of them); the
resolved options are saved as eval_config.json in the output directory.
codelm/cli.py calls configure_eval_parser lazily; `python -m evals.cli eval ...` does the same standalone.
Imports stay light here (no torch, no sandbox) so that `--help` is instant; the work is imported in run_eval_command.
Exit codes: 0 done, 1 some samples could not be scored (sandbox infrastructure errors), 2 bad input.
"""

import argparse
import dataclasses
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from codelm.config import ArgumentParser, add_options_command, option
from codelm.terms import COMPILE_HELP, COMPILE_SETTINGS, FIM, INFILL_MODES
from evals.models import MODEL_BACKENDS

BENCHMARKS = ("humaneval", "mbpp", "infilling", "humaneval-x")
HUMANEVAL_X_LANGUAGES = ("cpp", "java", "js", "go", "rust")
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


SANDBOXES = ("local", "docker")


@dataclass
class EvalConfig:
    """`codelm eval BENCHMARK` options. A field used by one benchmark only is listed in ONLY_FOR."""
    benchmark: str = option("humaneval", "which benchmark", choices=BENCHMARKS, cli=False)  # the subcommand
    model: str | None = option(None, "checkpoint, run directory or Hugging Face model dir", positional=True,
                               metavar="MODEL")
    samples: str | None = option(None, "score completions from a JSONL file (task_id, completion) instead of "
                                       "generating", metavar="FILE")
    output: str | None = option(None, "results directory; an existing one is resumed", metavar="DIR")
    k: list[str] = option(["1"], "report pass@K; repeat or give a comma list", flag="-k", repeat=True, metavar="K")
    n: int | None = option(None, "samples per task (default: 1 with -k 1 alone, else the largest k)")
    temperature: float | None = option(None, "default 0 (greedy) for n=1, else 0.2 for pass@1 only, 0.8 for "
                                             "pass@10/100 (Codex paper)")
    top_p: float | None = option(None, "nucleus sampling (default 0.95 when sampling)")
    max_new_tokens: int = option(512, "per completion")
    batch_size: int = option(8, "prompts per model call")
    limit: int | None = option(None, "only the first N tasks")
    tasks: str | None = option(None, "only these task ids, comma-separated")
    seed: int = option(0, "base seed; each sample's seed derives from it")
    data_dir: str | None = option(None, "directory overriding the benchmark files it holds (mbpp/, "
                                        "humaneval-infilling/, evalplus/); default $CODELM_DATA_DIR, then the copy "
                                        "packaged with codelm")
    workers: int | None = option(None, "programs run at once (default: the sandbox's choice)")
    sandbox: str | None = option(None, "where programs run (default local)", choices=SANDBOXES)
    backend: str = option("auto", "model backend: codelm (codelm checkpoints, Llama-architecture HF dirs), "
                                  "transformers (any AutoModelForCausalLM), vllm (make vllm-env), endpoint (--endpoint "
                                  "implies it); auto picks codelm for what it loads, else transformers. local|docker: "
                                  "the old spelling of --sandbox (deprecated)", choices=MODEL_BACKENDS + SANDBOXES)
    dtype: str = option("auto", "model weights: auto (bf16 on a GPU that has it, else fp32), float32, bfloat16, "
                                "float16")
    device: str = option("auto", "auto, cpu, cuda, cuda:N")
    compile: str = option("auto", "codelm backend: " + COMPILE_HELP, choices=COMPILE_SETTINGS)
    trust_remote_code: bool = option(False, "let transformers/vLLM run the code a model directory ships")
    tensor_parallel_size: int = option(1, "vllm: GPUs per model")
    gpu_memory_utilization: float = option(0.9, "vllm: share of GPU memory it may take")
    timeout: float | None = option(None, "CPU seconds per program (default 3; MBPP 10)")
    progress_every: float = option(10.0, "seconds between progress lines", hidden=True)
    plus: bool = option(False, "HumanEval+ / MBPP+ (evalplus): differential tests on many more inputs")
    mbpp_format: str = option("bigcode", "prompt: bigcode's docstring with one test or the paper's 3-shot "
                                         "[BEGIN]/[DONE]", choices=("bigcode", "3shot"))
    infilling_set: str = option("single-line", "which infilling benchmark", flag="--set", choices=INFILLING_SETS)
    mode: str = option(FIM, "decoding: fill-in-the-middle prompt or meet-in-the-middle", choices=INFILL_MODES)
    language: str | None = option(None, "HumanEval-X language (all: each in turn, one output directory each)",
                                  choices=(*HUMANEVAL_X_LANGUAGES, "all"))
    x_set: str = option("generation", "generation, or single-line infilling built from the canonical solutions",
                        flag="--set", choices=("generation", "single-line"))
    # a model behind an OpenAI-compatible completions API (vLLM, llama.cpp, TGI, codelm serve)
    endpoint: str | None = option(None, "OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1 (instead of MODEL)",
                                  metavar="URL")
    endpoint_model: str | None = option(None, "the model name the endpoint expects", flag="--model", metavar="NAME")
    concurrency: int = option(4, "endpoint: requests in flight")
    rate_limit: float | None = option(None, "endpoint: at most this many requests per second")
    retries: int = option(6, "endpoint: retries on 429/5xx with backoff")
    fim_template: str | None = option(None, "endpoint: raw FIM prompt with {prefix} and {suffix} instead of the "
                                            "suffix field")


@dataclass
class TrainingEvalOptions:
    """`codelm train` options for scoring HumanEval-infilling during training (the CLI hands the trainer a callback).
    No --backend, --dtype or --device here: the model scored is the one being trained, in memory, decoded by the codelm
    backend (evals/callback.py); `codelm train --backend ...` is refused as an unknown argument."""
    eval_infill_every: int = option(0, "score HumanEval-infilling every N steps, at validations (set --eval-every to a "
                                       "divisor of N; 0 = off); the model being trained is scored in memory with the "
                                       "codelm backend", metavar="N")
    eval_infill_set: str = option("random-span-light", "which HumanEval-infilling set", choices=INFILLING_SETS)
    eval_infill_limit: int = option(20, "first N tasks")
    eval_infill_mode: str = option(FIM, "decoding: fill-in-the-middle prompt or meet-in-the-middle",
                                   choices=INFILL_MODES)


ONLY_FOR = {"plus": ("humaneval", "mbpp"), "mbpp_format": ("mbpp",), "infilling_set": ("infilling",),
            "mode": ("infilling", "humaneval-x"), "language": ("humaneval-x",), "x_set": ("humaneval-x",)}
BENCHMARK_HELP = {"humaneval": "HumanEval, 164 problems (Chen et al. 2021)",
                  "mbpp": "MBPP test split, tasks 11-510 (Austin et al. 2021)",
                  "infilling": "HumanEval-infilling (Bavarian et al. 2022)",
                  "humaneval-x": "HumanEval-X in C++, Java, JavaScript, Go or Rust (Zheng et al. 2023)"}


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("eval", help="evaluate a model or score samples on a code benchmark")
    configure_eval_parser(parser)
    return parser


def configure_eval_parser(parser: argparse.ArgumentParser) -> None:
    parser.description, parser.formatter_class = __doc__, argparse.RawDescriptionHelpFormatter
    benchmarks = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK",
                                       parser_class=ArgumentParser)
    for name in BENCHMARKS:
        sub = benchmarks.add_parser(name, help=BENCHMARK_HELP[name], description=BENCHMARK_HELP[name])
        add_options_command(sub, EvalConfig, run_eval_command,
                            exclude={f for f, only in ONLY_FOR.items() if name not in only})
    compare = benchmarks.add_parser("compare", help="compare evaluation output directories (Markdown + HTML + chart)")
    compare.add_argument("runs", nargs="+", metavar="DIR", help="directories written by `codelm eval`")
    compare.add_argument("--output", metavar="DIR", default="runs/eval/compare", help="where the report goes")
    compare.set_defaults(func=run_compare_command)


def run_compare_command(args) -> int:
    from evals.compare import compare
    from evals.data import EvalInputError

    try:
        paths = compare(args.runs, args.output)
    except EvalInputError as e:
        print(f"codelm: error: {e}", file=sys.stderr)
        return 2
    print(f"report: {paths['markdown']}, {paths['html']}", file=sys.stderr)
    return 0


def resolve_backends(args) -> tuple[str, str]:
    """(sandbox, model backend). `--backend local|docker` is the old spelling of --sandbox: it still works, with a
    warning (the two value sets do not overlap). --endpoint implies the endpoint backend."""
    from evals.data import EvalInputError

    sandbox, backend = args.sandbox, args.backend
    if backend in SANDBOXES:
        print(f"codelm: warning: --backend {backend} is deprecated; the sandbox is chosen with --sandbox {backend} "
              f"(--backend now names the model backend)", file=sys.stderr)
        if sandbox not in (None, backend):
            raise EvalInputError(f"--backend {backend} (deprecated, meaning --sandbox) contradicts --sandbox {sandbox}")
        sandbox, backend = backend, "auto"
    if args.endpoint and backend not in ("auto", "endpoint"):
        raise EvalInputError(f"--endpoint serves the model; it cannot be combined with --backend {backend}")
    if backend == "endpoint" and not args.endpoint:
        raise EvalInputError("--backend endpoint needs --endpoint URL")
    return sandbox or "local", "endpoint" if args.endpoint else backend


def load_benchmark(args: EvalConfig):
    if args.plus:
        from evals import evalplus
        if args.benchmark == "humaneval":
            return evalplus.load_humaneval_plus(args.data_dir)
        return evalplus.load_mbpp_plus(args.data_dir, prompt_format=args.mbpp_format)
    if args.benchmark == "humaneval":
        from evals import humaneval
        return humaneval.load(args.data_dir)
    if args.benchmark == "humaneval-x":
        from evals import humaneval_x
        if args.x_set == "single-line":
            return humaneval_x.load_infilling(args.language, args.data_dir, mode=args.mode)
        return humaneval_x.load(args.language, args.data_dir)
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
    from codelm.config import resolve_config
    from codelm.errors import UserError
    from evals.data import EvalInputError

    try:
        return _run(resolve_config(EvalConfig, args, args.config))
    except (EvalInputError, UserError) as e:  # a bad sample file, or a missing/corrupt checkpoint
        print(f"codelm: error: {e}", file=sys.stderr)
        return 2


def _run(args: EvalConfig) -> int:
    from evals.data import EvalInputError

    if args.benchmark != "humaneval-x":
        return _run_one(args)
    if args.language is None:
        raise EvalInputError("humaneval-x needs --language (" + "|".join((*HUMANEVAL_X_LANGUAGES, "all")) + ")")
    if args.language != "all":
        return _run_one(args)
    if args.samples:
        raise EvalInputError("--language all generates; to score a sample file give its one language")
    return max(_run_one(dataclasses.replace(args, language=language,
                                            output=str(Path(args.output) / language) if args.output else None))
               for language in HUMANEVAL_X_LANGUAGES)


def _run_one(args: EvalConfig) -> int:
    from codelm.config import save_config
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
    sandbox, model_backend = resolve_backends(args)
    common = dict(ks=ks, limit=args.limit, tasks=tasks, workers=args.workers, backend=sandbox,
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
            planned = len(runner.select_tasks(benchmark, args.limit, tasks)[0]) * sampling.n * sampling.max_new_tokens
            model = load_model(args.model, args.device, backend=model_backend, dtype=args.dtype,
                               trust_remote_code=args.trust_remote_code, compile=args.compile, planned_tokens=planned,
                               vllm_options={"tensor_parallel_size": args.tensor_parallel_size,
                                             "gpu_memory_utilization": args.gpu_memory_utilization})
        summary = runner.evaluate_model(benchmark, model, output, sampling, seed=args.seed,
                                        batch_size=args.batch_size, **common)
    save_config(args, output / "eval_config.json")
    print(f"results: {output}/results.jsonl, summary: {output}/summary.json", file=sys.stderr)
    return 1 if summary["counts"]["not_scored"] else 0


def main(argv=None) -> int:
    parser = ArgumentParser(prog="codelm")
    add_eval_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

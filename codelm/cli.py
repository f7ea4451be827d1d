"""The `codelm` command: the one place that wires the rooms together.

    codelm data prepare [--source stdlib] [--out data/stdlib] ...
    codelm data stats DIR             the manifest as a table, and DIR/stats.png
    codelm data exercises --out FILE  (signature + docstring -> body) pairs as JSONL
    codelm train [--config FILE] [--preset tiny] [--objective l2r] [--model.n_layer 4] ...
    codelm sample CHECKPOINT --prompt "def fib(n):" [--temperature 0.8 --top-p 0.95 --n 4 --stop '\n\n']
    codelm infill CHECKPOINT --prefix-file A --suffix-file B [--mode fim|mim]
    codelm info [PRESET ...]          parameters and FLOPs/token of the presets
    codelm export --hf DIR CHECKPOINT Hugging Face Llama directory (transformers, vLLM)
    codelm import-hf HF_DIR --out CKPT  a local HF Llama/Qwen2 model as a checkpoint, keeping its tokenizer
                    [--add-tokens fim,mim]  ... with the tokens FIM/MIM training needs
    codelm eval ...                   (evals/, imported lazily)

A user mistake (missing file, bad value, unknown preset) prints one `codelm: error: ...` line and exits 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from codelm.config import UNSET, add_dataclass_arguments, resolve_config, save_config
from codelm.errors import UserError

log = logging.getLogger("codelm")


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line and exit code 2 (no usage dump)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)


# ----------------------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------------------
def cmd_data_prepare(args) -> int:
    from codelm.data.prepare import DataConfig, prepare

    cfg = resolve_config(DataConfig, args, args.config)
    index = prepare(cfg)
    save_config(cfg, Path(cfg.out) / "data_config.json")
    print_shard_summary(cfg.out, index)
    return 0


def print_shard_summary(path, index: dict) -> None:
    from codelm.data.stats import format_stats
    print(format_stats(path, index))


def cmd_data_stats(args) -> int:
    from codelm.data.shards import ShardSet

    shards = ShardSet(args.dir)
    print_shard_summary(args.dir, shards.index)
    if not args.no_plot:
        from codelm.data.stats import plot_stats
        try:
            print(f"  distributions: {plot_stats(args.dir, shards.index)}")
        except OSError as e:  # a read-only shard directory: the table is what matters
            print(f"  distributions: not written ({e.strerror})")
    return 0


def cmd_data_exercises(args) -> int:
    from codelm.data.exercises import ExercisesConfig, write_exercises

    cfg = resolve_config(ExercisesConfig, args, args.config)
    summary = write_exercises(cfg)
    save_config(cfg, Path(cfg.out).with_suffix(".config.json"))
    print(json.dumps(summary, indent=2))
    return 0


# ----------------------------------------------------------------------------------------------------------------
# train / sample / info
# ----------------------------------------------------------------------------------------------------------------
def cmd_train(args) -> int:
    from codelm.train import TrainConfig, Trainer

    from codelm import distributed
    from codelm.config import read_config_file

    cfg = resolve_config(TrainConfig, args, args.config)  # --model.X flags land in cfg.model
    # a --recipe fills only the options the user did not give, on the command line or in the file
    explicit = {k.split(".")[0].replace("-", "_") for k, v in vars(args).items() if v is not UNSET}
    if args.config:
        explicit |= set(read_config_file(args.config))
    trainer = Trainer(cfg, callbacks=_eval_callbacks(args), explicit=explicit)
    try:
        summary = trainer.fit()
    except BaseException:
        distributed.shutdown()
        raise
    distributed.shutdown(synchronize=True)
    if trainer.dist.is_main:  # under torchrun, one summary, not one per process
        print(json.dumps(summary, indent=2))
    return 0


def _eval_callbacks(args) -> list:
    """Evaluation during training (--eval-infill-every N): the CLI wires evals into the trainer; codelm/train.py never
    imports evals. The Trainer calls callbacks at each validation; this one runs on steps divisible by N."""
    every = getattr(args, "eval_infill_every", None)
    if not every:
        return []
    from evals.callback import make_infill_callback
    from evals.data import EvalInputError
    try:
        return [make_infill_callback(args.eval_infill_set, limit=args.eval_infill_limit, mode=args.eval_infill_mode,
                                     every=every)]
    except EvalInputError as e:
        raise UserError(str(e)) from None


def cmd_runs_plot(args) -> int:
    from codelm.runs import plot_runs

    out = plot_runs(args.runs, args.out or Path(args.runs[0]) / "loss.png")
    print(f"wrote {out}")
    return 0


def _stop_strings(values: list[str] | None) -> list[str]:
    """--stop values with backslash escapes understood (a shell makes typing a real newline awkward)."""
    import codecs
    return [codecs.decode(v, "unicode_escape") for v in values or []]


def _sampling_params(args):
    from codelm.generate import SamplingParams
    return SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                          top_p=args.top_p, stop=_stop_strings(args.stop), seed=args.seed,
                          lookup_draft=args.lookup_draft)


def _seeds(args) -> list[int] | None:
    if args.seeds:
        try:
            seeds = [int(s) for s in args.seeds.split(",")]
        except ValueError:
            raise UserError(f"--seeds {args.seeds!r}: expected comma-separated integers") from None
        if len(seeds) != args.n:
            raise UserError(f"--seeds has {len(seeds)} values for --n {args.n}")
        return seeds
    return None if args.seed is None else [args.seed + j for j in range(args.n)]


def cmd_sample(args) -> int:
    from codelm.checkpoint import load_checkpoint
    from codelm.generate import generate_batch

    prompt = Path(args.prompt_file).read_text() if args.prompt_file else args.prompt
    if prompt is None:
        raise UserError("give --prompt TEXT or --prompt-file FILE")
    if args.n < 1:
        raise UserError(f"--n must be >= 1, got {args.n}")
    ckpt = load_checkpoint(args.checkpoint)
    params, seeds = _sampling_params(args), _seeds(args)
    if args.n == 1:  # stream the one sample as it is generated
        sys.stdout.write(prompt)
        generate_batch(ckpt.model, ckpt.tokenizer, [prompt], params, None if seeds is None else [seeds], 1,
                       on_token=lambda e: (sys.stdout.write(e.text), sys.stdout.flush()),
                       capabilities=ckpt.capabilities)
        sys.stdout.write("\n")
        return 0
    samples = generate_batch(ckpt.model, ckpt.tokenizer, [prompt], params, None if seeds is None else [seeds],
                             args.n, capabilities=ckpt.capabilities)[0]
    for i, c in enumerate(samples):
        print(f"----- sample {i + 1}/{args.n} ({c.finish_reason}, mean logprob {c.mean_logprob:.3f})")
        print(prompt + c.text)
    return 0


def cmd_infill(args) -> int:
    from codelm.checkpoint import load_checkpoint
    from codelm.infill import infill, require_mode

    def read(path, what):
        try:
            return Path(path).read_text()
        except OSError as e:
            raise UserError(f"{what} {path}: {e.strerror or e}") from None

    prefix = read(args.prefix_file, "--prefix-file") if args.prefix_file else (args.prefix or "")
    suffix = read(args.suffix_file, "--suffix-file") if args.suffix_file else (args.suffix or "")
    ckpt = load_checkpoint(args.checkpoint)
    require_mode(ckpt.capabilities, args.mode, args.fim_format)
    result = infill(ckpt.model, ckpt.tokenizer, prefix, suffix, args.mode, _sampling_params(args), n=args.n,
                    seeds=_seeds(args), capabilities=ckpt.capabilities, fim_format=args.fim_format)
    if args.json:
        print(json.dumps({"mode": args.mode, "middle": result.best.text, "finish_reason": result.best.finish_reason,
                          "samples": [c.text for c in result.samples], "steps": result.steps, "met": result.met}))
        return 0
    sys.stdout.write(result.best.text)
    sys.stdout.flush()
    met = f", met: {sum(result.met)}/{len(result.met)}" if args.mode == "mim" else ""
    print(f"\n----- {args.mode}: {result.best.finish_reason}, sequential steps {result.steps}{met}", file=sys.stderr)
    return 0


def cmd_info(args) -> int:
    from codelm.model import PRESETS, describe, preset_config

    names = args.presets or list(PRESETS)
    print(f"{'preset':8s} {'params':>10s} {'non-emb':>10s} {'GFLOPs/token (train)':>21s}  layers x heads x dim, vocab")
    for name in names:
        cfg = preset_config(name)
        d = describe(cfg)
        print(f"{name:8s} {d['parameters'] / 1e6:>9.1f}M {d['non_embedding_parameters'] / 1e6:>9.1f}M "
              f"{d['flops_per_token_train'] / 1e9:>21.3f}  {cfg.n_layer} x {cfg.n_head} x {cfg.head_dim}"
              f" (kv heads {cfg.n_kv_head}), {cfg.tokenizer}")
    return 0


def cmd_export(args) -> int:
    import torch
    from codelm.hf import export_hf

    out = export_hf(args.checkpoint, args.hf, dtype=getattr(torch, args.dtype) if args.dtype else None)
    print(f"wrote {out} (Hugging Face Llama format)")
    return 0


def cmd_import_hf(args) -> int:
    from codelm.checkpoint import load_checkpoint
    from codelm.hf import import_hf_to_checkpoint, parse_add_tokens

    out = import_hf_to_checkpoint(args.hf_dir, args.out, parse_add_tokens(args.add_tokens))
    caps = load_checkpoint(out).capabilities
    added = ", ".join(f"{k}={v}" for k, v in caps.get("added_tokens", {}).items())
    reused = ", ".join(f"{k}: {v}" for k, v in caps.get("reused_tokens", {}).items())
    print(f"wrote {out} (codelm checkpoint with the model's own tokenizer"
          + (f"; added {added}" if added else "") + (f"; reused {reused}" if reused else "") + ")")
    return 0


# ----------------------------------------------------------------------------------------------------------------
# the parser
# ----------------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from codelm.data.prepare import DataConfig
    from codelm.model import ModelConfig
    from codelm.train import TrainConfig

    parser = ArgumentParser(prog="codelm", description="Train and evaluate code language models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)

    data = sub.add_parser("data", help="prepare and inspect token shards")
    data_sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", parser_class=ArgumentParser)
    prep = data_sub.add_parser("prepare", help="sources -> filtered, deduplicated, tokenized shards")
    prep.add_argument("--config", help="TOML/JSON/YAML file with these options")
    add_dataclass_arguments(prep, DataConfig)
    prep.set_defaults(func=cmd_data_prepare)
    stats = data_sub.add_parser("stats", help="print a shard directory's manifest as a table")
    stats.add_argument("dir", help="shard directory")
    stats.add_argument("--no-plot", action="store_true", help="skip writing DIR/stats.png")
    stats.set_defaults(func=cmd_data_stats)
    from codelm.data.exercises import ExercisesConfig
    exe = data_sub.add_parser("exercises", help="(signature + docstring -> body) pairs as JSONL (phi-1 style)")
    exe.add_argument("--config", help="TOML/JSON/YAML file with these options")
    add_dataclass_arguments(exe, ExercisesConfig)
    exe.set_defaults(func=cmd_data_exercises)
    data.set_defaults(func=lambda a: (data.print_help(), 2)[1])

    train = sub.add_parser("train", help="train a model (l2r, fim, mim or a mixture)")
    train.add_argument("--config", help="TOML/JSON/YAML file with these options ([model] table for the model)")
    add_dataclass_arguments(train, TrainConfig)
    model_group = train.add_argument_group("model overrides (on top of --preset)")
    for name in ModelConfig.__dataclass_fields__:
        model_group.add_argument(f"--model.{name}", dest=f"model.{name}", default=UNSET, metavar="V",
                                 help=argparse.SUPPRESS if name in ("init_std",) else None)
    evals_group = train.add_argument_group("evaluation during training (logged with the validation losses)")
    evals_group.add_argument("--eval-infill-every", type=int, default=None, metavar="N",
                             help="score HumanEval-infilling every N steps, at validations (set --eval-every to a "
                                  "divisor of N)")
    evals_group.add_argument("--eval-infill-set", default="random-span-light",
                             choices=("single-line", "multi-line", "random-span", "random-span-light"))
    evals_group.add_argument("--eval-infill-limit", type=int, default=20, help="first N tasks (default 20)")
    evals_group.add_argument("--eval-infill-mode", choices=("fim", "mim"), default="fim")
    train.set_defaults(func=cmd_train)

    smp = sub.add_parser("sample", help="generate text from a checkpoint")
    smp.add_argument("checkpoint", help="checkpoint directory or run directory (its latest checkpoint)")
    smp.add_argument("--prompt", help="prompt text")
    smp.add_argument("--prompt-file", help="read the prompt from this file")
    _add_sampling_arguments(smp)
    smp.set_defaults(func=cmd_sample)

    inf = sub.add_parser("infill", help="fill in the middle between a prefix and a suffix")
    inf.add_argument("checkpoint", help="checkpoint directory or run directory (its latest checkpoint)")
    inf.add_argument("--prefix-file", help="the text before the hole")
    inf.add_argument("--suffix-file", help="the text after the hole")
    inf.add_argument("--prefix", help="prefix text (instead of --prefix-file)")
    inf.add_argument("--suffix", help="suffix text (instead of --suffix-file)")
    inf.add_argument("--mode", choices=("fim", "mim"), default="fim",
                     help="fim: a fill-in-the-middle prompt; mim: meet-in-the-middle decoding (default fim)")
    inf.add_argument("--fim-format", choices=("psm", "spm"), default="psm", help="FIM prompt order (default psm)")
    inf.add_argument("--json", action="store_true", help="print one JSON object (middle, samples, steps)")
    _add_sampling_arguments(inf, max_new_tokens=64)
    inf.set_defaults(func=cmd_infill)

    info = sub.add_parser("info", help="parameters and FLOPs/token of model presets")
    info.add_argument("presets", nargs="*", help="preset names (default: all)")
    info.set_defaults(func=cmd_info)

    exp = sub.add_parser("export", help="write a checkpoint as a Hugging Face Llama directory (transformers, vLLM)")
    exp.add_argument("checkpoint", help="checkpoint directory or run directory (its latest checkpoint)")
    exp.add_argument("--hf", required=True, metavar="DIR", help="output directory (new or empty)")
    exp.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                     help="weights' dtype (default: the checkpoint's)")
    exp.set_defaults(func=cmd_export)
    imp = sub.add_parser("import-hf", help="a Hugging Face Llama/Qwen2 directory -> a codelm checkpoint")
    imp.add_argument("hf_dir", help="local Hugging Face model directory (config.json, safetensors, tokenizer.json)")
    imp.add_argument("--out", required=True, help="checkpoint directory to write")
    imp.add_argument("--add-tokens", default="", metavar="fim,mim",
                     help="add the tokens these objectives need (the family's own FIM tokens are reused; MIM adds "
                          "<|r2l|>); new embedding/output rows = the mean of existing rows")
    imp.set_defaults(func=cmd_import_hf)

    runs = sub.add_parser("runs", help="inspect training runs")
    runs_sub = runs.add_subparsers(dest="runs_command", metavar="SUBCOMMAND", parser_class=ArgumentParser)
    plot = runs_sub.add_parser("plot", help="overlay the loss curves of one or more runs in a PNG")
    plot.add_argument("runs", nargs="+", help="run directories (each with metrics.jsonl)")
    plot.add_argument("--out", help="PNG to write (default: RUN/loss.png of the first run)")
    plot.set_defaults(func=cmd_runs_plot)
    runs.set_defaults(func=lambda a: (runs.print_help(), 2)[1])

    _add_optional_commands(sub)
    return parser


def _add_sampling_arguments(p, max_new_tokens: int = 128) -> None:
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens,
                   help=f"tokens to generate (default {max_new_tokens})")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    p.add_argument("--stop", action="append", help="stop string, backslash escapes understood (repeatable)")
    p.add_argument("--n", type=int, default=1, help="number of samples (one prefill, decoded as one batch)")
    p.add_argument("--seed", type=int, default=None, help="random seed (sample j uses seed + j)")
    p.add_argument("--seeds", help="one seed per sample, comma-separated (instead of --seed)")
    p.add_argument("--lookup-draft", type=int, default=4,
                   help="greedy, one sample: draft up to this many tokens per pass from earlier text and keep what "
                        "the model agrees with (same output, fewer passes on repetitive code; 0 = off; default 4)")


def _add_optional_commands(sub) -> None:
    """Rooms that plug a command in (evals, web). Imported lazily; their module tops stay free of torch."""
    for module, adder in (("evals.cli", "add_eval_parser"), ("web.cli", "add_serve_parser"),
                          ("codelm.cli_extra", "add_commands")):
        try:
            mod = __import__(module, fromlist=[adder])
        except ImportError as e:
            if e.name and module.startswith(e.name):
                continue  # that room is not built yet
            raise
        getattr(mod, adder)(sub)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(getattr(args, "verbose", False))
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"codelm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("codelm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

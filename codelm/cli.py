"""The `codelm` command: the one place that wires the rooms together.

    codelm data prepare [--source stdlib] [--out data/stdlib] ...
    codelm data stats DIR             the manifest as a table, and DIR/stats.png
    codelm data exercises --out FILE  (signature + docstring -> body) pairs as JSONL
    codelm train [--config FILE] [--preset tiny] [--objective l2r] [--model.n_layer 4] ...
    codelm sample CHECKPOINT --prompt "def fib(n):" [--temperature 0.8 --top-p 0.95 --n 4 --stop '\n\n']
    codelm infill CHECKPOINT --prefix-file A --suffix-file B [--mode fim|mim]
    codelm info [PRESET ...]          parameters and FLOPs/token of the presets
    codelm export --hf DIR CHECKPOINT Hugging Face Llama directory (transformers, vLLM)
    codelm export --gguf FILE CHECKPOINT  one GGUF file (llama.cpp, Ollama, llama.vim / llama.vscode)
    codelm import-hf HF_DIR --out CKPT  a local HF Llama/Qwen2 model as a checkpoint, keeping its tokenizer
                    [--add-tokens fim,mim]  ... with the tokens FIM/MIM training needs
    codelm eval ...                   (evals/, imported lazily)
    codelm serve CHECKPOINT           the infill API and playground (web/, imported lazily)

A user mistake (missing file, bad value, unknown preset) prints one `codelm: error: ...` line and exits 2.

A command's options are a dataclass (codelm/config.py): a flag per field, `--config FILE` for a file of them.
Only the command being run is built and imported: `codelm --help` and `codelm eval ... --samples` never import torch.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from codelm.config import (UNSET, ArgumentParser, add_dataclass_arguments, add_options_command, option, resolve_config,
                           save_config)
from codelm.errors import UserError
from codelm.terms import COMPILE_HELP, COMPILE_SETTINGS, FIM, INFILL_MODES

log = logging.getLogger("codelm")


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
    if "slurm" in index:  # --executor slurm: jobs submitted (or, with --dry-run, scripts written)
        print(f"{'submitted' if index['submitted'] else 'wrote (not submitted)'}: {index['slurm']}")
        return 0
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
    from evals.cli import TrainingEvalOptions

    opts = resolve_config(TrainingEvalOptions, args)
    if not opts.eval_infill_every:
        return []
    from evals.callback import make_infill_callback
    from evals.data import EvalInputError
    try:
        return [make_infill_callback(opts.eval_infill_set, limit=opts.eval_infill_limit, mode=opts.eval_infill_mode,
                                     every=opts.eval_infill_every)]
    except EvalInputError as e:
        raise UserError(str(e)) from None


def cmd_runs_plot(args) -> int:
    from codelm.runs import plot_runs

    out = plot_runs(args.runs, args.out or Path(args.runs[0]) / "loss.png")
    print(f"wrote {out}")
    return 0


@dataclass
class SamplingOptions:
    """Decoding options shared by `sample` and `infill`."""
    max_new_tokens: int = option(128, "tokens to generate")
    temperature: float = option(0.0, "0 = greedy")
    top_k: int = option(0, "keep the k most likely tokens (0 = off)")
    top_p: float = option(1.0, "nucleus sampling mass (1 = off)")
    stop: list[str] = option([], "stop string, backslash escapes understood (repeatable)", repeat=True,
                             metavar="TEXT")
    n: int = option(1, "number of samples (one prefill, decoded as one batch)")
    seed: int | None = option(None, "random seed (sample j uses seed + j)")
    seeds: str = option("", "one seed per sample, comma-separated (instead of --seed)")
    lookup_draft: int = option(4, "greedy, one sample: draft up to this many tokens per pass from earlier text and "
                                  "keep what the model agrees with (same output, fewer passes on repetitive code; "
                                  "0 = off)")
    backend: str = option("auto", "codelm (codelm checkpoints, Llama-architecture HF dirs) or transformers (any "
                                  "AutoModelForCausalLM); auto picks codelm for what it loads",
                          choices=("auto", "codelm", "transformers"))
    compile: str = option("auto", "codelm backend: " + COMPILE_HELP, choices=COMPILE_SETTINGS)
    dtype: str = option("auto", "transformers backend: auto, float32, bfloat16, float16")
    device: str = option("auto", "transformers backend: auto, cpu, cuda, cuda:N")
    trust_remote_code: bool = option(False, "transformers backend: run the code a model directory ships")


@dataclass
class SampleConfig(SamplingOptions):
    checkpoint: str = option("", "checkpoint directory or run directory (its latest checkpoint)", positional=True)
    prompt: str | None = option(None, "prompt text")
    prompt_file: str = option("", "read the prompt from this file")


@dataclass
class InfillConfig(SamplingOptions):
    checkpoint: str = option("", "checkpoint directory or run directory (its latest checkpoint)", positional=True)
    prefix_file: str = option("", "the text before the hole")
    suffix_file: str = option("", "the text after the hole")
    prefix: str = option("", "prefix text (instead of --prefix-file)")
    suffix: str = option("", "suffix text (instead of --suffix-file)")
    mode: str = option(FIM, "fim: a fill-in-the-middle prompt; mim: meet-in-the-middle decoding",
                       choices=INFILL_MODES)
    fim_format: str = option("psm", "FIM prompt order", choices=("psm", "spm"))
    json: bool = option(False, "print one JSON object (middle, samples, steps)")
    max_new_tokens: int = option(64, "tokens to generate")


def _stop_strings(values: list[str] | None) -> list[str]:
    """--stop values with backslash escapes understood (a shell makes typing a real newline awkward)."""
    import codecs
    return [codecs.decode(v, "unicode_escape") for v in values or []]


def _sampling_params(cfg: SamplingOptions):
    from codelm.generate import SamplingParams
    return SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k,
                          top_p=cfg.top_p, stop=_stop_strings(cfg.stop), seed=cfg.seed,
                          lookup_draft=cfg.lookup_draft)


def _seeds(cfg: SamplingOptions) -> list[int] | None:
    if cfg.n < 1:
        raise UserError(f"--n must be >= 1, got {cfg.n}")
    if cfg.seeds:
        try:
            seeds = [int(s) for s in cfg.seeds.split(",")]
        except ValueError:
            raise UserError(f"--seeds {cfg.seeds!r}: expected comma-separated integers") from None
        if len(seeds) != cfg.n:
            raise UserError(f"--seeds has {len(seeds)} values for --n {cfg.n}")
        return seeds
    return None if cfg.seed is None else [cfg.seed + j for j in range(cfg.n)]


def _compile_setting(model, setting: str):
    from codelm.compiled import apply_compile_setting
    return apply_compile_setting(model, setting)


def _checkpoint(cfg) -> str:
    if not cfg.checkpoint:
        raise UserError("give a CHECKPOINT (a checkpoint or run directory)")
    return cfg.checkpoint


def _transformers_lm(cfg):
    """The transformers backend's model when --backend (or auto, for an architecture codelm cannot convert) picks
    it; None for the codelm backend."""
    from codelm.backends import auto_backend

    path = _checkpoint(cfg)
    if (cfg.backend if cfg.backend != "auto" else auto_backend(path)) != "transformers":
        return None
    from codelm.backends.transformers_lm import TransformersLM
    return TransformersLM.load(path, device=cfg.device, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)


def cmd_sample(args) -> int:
    cfg = resolve_config(SampleConfig, args, args.config)
    prompt = _read_text(cfg.prompt_file, "--prompt-file") if cfg.prompt_file else cfg.prompt
    if prompt is None:
        raise UserError("give --prompt TEXT or --prompt-file FILE")
    params, seeds = _sampling_params(cfg), _seeds(cfg)
    from codelm.loader import load_checkpoint
    from codelm.generate import generate_batch

    lm = _transformers_lm(cfg)
    if lm is not None:
        for i, c in enumerate(lm.complete([prompt], params, None if seeds is None else [seeds], cfg.n)[0]):
            print(f"----- sample {i + 1}/{cfg.n} ({c.finish_reason}, mean logprob {c.mean_logprob:.3f})")
            print(prompt + c.text)
        return 0
    ckpt = load_checkpoint(_checkpoint(cfg))
    _compile_setting(ckpt.model, cfg.compile)
    if cfg.n == 1:  # stream the one sample as it is generated
        sys.stdout.write(prompt)
        generate_batch(ckpt.model, ckpt.tokenizer, [prompt], params, None if seeds is None else [seeds], 1,
                       on_token=lambda e: (sys.stdout.write(e.text), sys.stdout.flush()),
                       capabilities=ckpt.capabilities)
        sys.stdout.write("\n")
        return 0
    samples = generate_batch(ckpt.model, ckpt.tokenizer, [prompt], params, None if seeds is None else [seeds],
                             cfg.n, capabilities=ckpt.capabilities)[0]
    for i, c in enumerate(samples):
        print(f"----- sample {i + 1}/{cfg.n} ({c.finish_reason}, mean logprob {c.mean_logprob:.3f})")
        print(prompt + c.text)
    return 0


def _read_text(path, what) -> str:
    try:
        return Path(path).read_text()
    except OSError as e:
        raise UserError(f"{what} {path}: {e.strerror or e}") from None


def cmd_infill(args) -> int:
    cfg = resolve_config(InfillConfig, args, args.config)
    prefix = _read_text(cfg.prefix_file, "--prefix-file") if cfg.prefix_file else cfg.prefix
    suffix = _read_text(cfg.suffix_file, "--suffix-file") if cfg.suffix_file else cfg.suffix
    params, seeds = _sampling_params(cfg), _seeds(cfg)
    from codelm.loader import load_checkpoint
    from codelm.infill import Infill, best_of, infill, require_mode

    lm = _transformers_lm(cfg)
    if lm is not None:  # the family's FIM template (refused in one line for a model without FIM tokens)
        if cfg.mode != "fim":
            raise UserError("the transformers backend infills with --mode fim only (meet-in-the-middle needs a "
                            "codelm model trained with the mim objective)")
        samples = lm.infill([prefix], [suffix], params, None if seeds is None else [seeds], cfg.n, cfg.fim_format)[0]
        result = Infill("fim", samples, best_of(samples), [c.passes for c in samples], [False] * len(samples))
    else:
        ckpt = load_checkpoint(_checkpoint(cfg))
        require_mode(ckpt.capabilities, cfg.mode, cfg.fim_format, ckpt.tokenizer)
        _compile_setting(ckpt.model, cfg.compile)
        result = infill(ckpt.model, ckpt.tokenizer, prefix, suffix, cfg.mode, params, n=cfg.n, seeds=seeds,
                        capabilities=ckpt.capabilities, fim_format=cfg.fim_format)
    if cfg.json:
        print(json.dumps({"mode": cfg.mode, "middle": result.best.text, "finish_reason": result.best.finish_reason,
                          "samples": [c.text for c in result.samples], "steps": result.steps, "met": result.met}))
        return 0
    sys.stdout.write(result.best.text)
    sys.stdout.flush()
    reasons = {"eot": "the model ended the middle", "stop": "a stop sequence", "met": "the two sides met",
               "length": f"the --max-new-tokens limit ({cfg.max_new_tokens})"}
    reason = reasons.get(result.best.finish_reason, result.best.finish_reason)
    met = f"; the two sides met in {sum(result.met)} of {len(result.met)} samples" if cfg.mode == "mim" else ""
    steps = result.steps[0] if len(result.steps) == 1 else result.steps
    print(f"\n----- end of the infilled middle ({cfg.mode}): stopped by {reason}; {steps} sequential model passes"
          f"{met}", file=sys.stderr)
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


@dataclass
class ExportConfig:
    checkpoint: str = option("", "checkpoint directory or run directory (its latest checkpoint)", positional=True)
    hf: str = option("", "output directory for the Hugging Face Llama format (new or empty)", metavar="DIR")
    gguf: str = option("", "output GGUF file for llama.cpp / Ollama (written atomically)", metavar="FILE")
    dtype: str | None = option(None, "weights' dtype (--hf default: the checkpoint's; --gguf: f32; q8_0 is GGUF only)",
                               choices=("float32", "bfloat16", "float16", "f32", "f16", "bf16", "q8_0"))


@dataclass
class ImportHfConfig:
    hf_dir: str = option("", "local Hugging Face model directory (config.json, safetensors, tokenizer.json)",
                         positional=True)
    out: str = option("", "checkpoint directory to write")
    add_tokens: str = option("", "fim,mim: add the tokens these objectives need (the family's own FIM tokens are "
                                 "reused; MIM adds <|r2l|>); new embedding/output rows = the mean of existing rows")


def cmd_export(args) -> int:
    cfg = resolve_config(ExportConfig, args, args.config)
    if bool(cfg.hf) == bool(cfg.gguf):
        raise UserError("give one of --hf DIR or --gguf FILE, the output to write")
    if cfg.hf and cfg.dtype in _GGUF_DTYPES.values():
        raise UserError(f"--dtype {cfg.dtype} is a GGUF type; with --hf use float32, bfloat16 or float16")
    import torch
    from codelm.hf import export_hf
    from codelm.loader import load_checkpoint

    if cfg.gguf:
        from codelm.gguf import export_gguf
        out = export_gguf(load_checkpoint(_checkpoint(cfg)), cfg.gguf,
                          dtype=_GGUF_DTYPES.get(cfg.dtype or "float32", cfg.dtype))
        print(f"wrote {out} (GGUF, llama.cpp's llama architecture)")
        return 0
    out = export_hf(load_checkpoint(_checkpoint(cfg)), cfg.hf, dtype=getattr(torch, cfg.dtype) if cfg.dtype else None)
    print(f"wrote {out} (Hugging Face Llama format)")
    return 0


# --dtype's HF spellings work for GGUF too; q8_0 is GGUF only
_GGUF_DTYPES = {"float32": "f32", "float16": "f16", "bfloat16": "bf16", "q8_0": "q8_0"}


def cmd_import_hf(args) -> int:
    cfg = resolve_config(ImportHfConfig, args, args.config)
    if not cfg.hf_dir or not cfg.out:
        raise UserError("give HF_DIR and --out CHECKPOINT_DIR")
    from codelm.hf import import_hf_to_checkpoint, parse_add_tokens
    from codelm.loader import load_checkpoint

    out = import_hf_to_checkpoint(cfg.hf_dir, cfg.out, parse_add_tokens(cfg.add_tokens))
    caps = load_checkpoint(out).capabilities
    added = ", ".join(f"{k}={v}" for k, v in caps.get("added_tokens", {}).items())
    reused = ", ".join(f"{k}: {v}" for k, v in caps.get("reused_tokens", {}).items())
    print(f"wrote {out} (codelm checkpoint with the model's own tokenizer"
          + (f"; added {added}" if added else "") + (f"; reused {reused}" if reused else "") + ")")
    return 0


# ----------------------------------------------------------------------------------------------------------------
# the parser: one function per command, called only for the command being run
# ----------------------------------------------------------------------------------------------------------------
def _configure_data(data) -> None:
    from codelm.data.exercises import ExercisesConfig
    from codelm.data.prepare import DataConfig

    data_sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", parser_class=ArgumentParser)
    prep = data_sub.add_parser("prepare", help="sources -> filtered, deduplicated, tokenized shards")
    add_options_command(prep, DataConfig, cmd_data_prepare)
    stats = data_sub.add_parser("stats", help="print a shard directory's manifest as a table")
    stats.add_argument("dir", help="shard directory")
    stats.add_argument("--no-plot", action="store_true", help="skip writing DIR/stats.png")
    stats.set_defaults(func=cmd_data_stats)
    exe = data_sub.add_parser("exercises", help="(signature + docstring -> body) pairs as JSONL (phi-1 style)")
    add_options_command(exe, ExercisesConfig, cmd_data_exercises)
    data.set_defaults(func=lambda a: (data.print_help(), 2)[1])


def _configure_train(train) -> None:
    from codelm.model import ModelConfig
    from codelm.train import TrainConfig

    train.add_argument("--config", help="TOML/JSON/YAML file with these options ([model] table for the model)")
    add_dataclass_arguments(train, TrainConfig)
    model_group = train.add_argument_group("model overrides (on top of --preset)")
    for name in ModelConfig.__dataclass_fields__:
        model_group.add_argument(f"--model.{name}", dest=f"model.{name}", default=UNSET, metavar="V",
                                 help=argparse.SUPPRESS if name in ("init_std",) else None)
    from evals.cli import TrainingEvalOptions  # the CLI wires rooms together; train.py never imports evals
    add_dataclass_arguments(train.add_argument_group("evaluation during training (logged with the validation "
                                                     "losses)"), TrainingEvalOptions)
    train.set_defaults(func=cmd_train, options=TrainConfig)


def _configure_info(info) -> None:
    info.add_argument("presets", nargs="*", help="preset names (default: all)")
    info.set_defaults(func=cmd_info)


def _configure_runs(runs) -> None:
    runs_sub = runs.add_subparsers(dest="runs_command", metavar="SUBCOMMAND", parser_class=ArgumentParser)
    plot = runs_sub.add_parser("plot", help="overlay the loss curves of one or more runs in a PNG")
    plot.add_argument("runs", nargs="+", help="run directories (each with metrics.jsonl)")
    plot.add_argument("--out", help="PNG to write (default: RUN/loss.png of the first run)")
    plot.set_defaults(func=cmd_runs_plot)
    runs.set_defaults(func=lambda a: (runs.print_help(), 2)[1])


def _configure_eval(p) -> None:
    from evals.cli import configure_eval_parser  # the evals room plugs its command in (no torch at its top)
    configure_eval_parser(p)


def _configure_serve(p) -> None:
    from web.cli import configure_serve_parser  # the web room likewise (no torch or FastAPI at its top)
    configure_serve_parser(p)


def _options(cls, func):
    """Configure a command whose options are one dataclass."""
    return lambda p: add_options_command(p, cls, func)


# name -> (one-line help, the function adding its arguments); the order is --help's
COMMANDS = {
    "data": ("prepare and inspect token shards", _configure_data),
    "train": ("train a model (l2r, fim, mim or a mixture)", _configure_train),
    "sample": ("generate text from a checkpoint", _options(SampleConfig, cmd_sample)),
    "infill": ("fill in the middle between a prefix and a suffix", _options(InfillConfig, cmd_infill)),
    "info": ("parameters and FLOPs/token of model presets", _configure_info),
    "export": ("write a checkpoint as a Hugging Face Llama directory (transformers, vLLM) or a GGUF file "
               "(llama.cpp, Ollama)", _options(ExportConfig, cmd_export)),
    "import-hf": ("a Hugging Face Llama/Qwen2 directory -> a codelm checkpoint",
                  _options(ImportHfConfig, cmd_import_hf)),
    "runs": ("inspect training runs", _configure_runs),
    "eval": ("evaluate a model or score samples on a code benchmark", _configure_eval),
    "serve": ("serve the infill API and the browser playground", _configure_serve),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or (`command` given) only that command's arguments: what `main` builds, so that a
    command imports only what it needs. An unknown `command` builds none (argparse then names the mistake)."""
    parser = ArgumentParser(prog="codelm", description="Train and evaluate code language models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    for name, (help_text, configure) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if command is None or command == name:
            configure(p)
    return parser


def _command_name(argv: list[str]) -> str:
    """The subcommand in argv: the first word that is not a flag (the top level has only flags without values)."""
    return next((a for a in argv if not a.startswith("-")), "")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command_name(argv))
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

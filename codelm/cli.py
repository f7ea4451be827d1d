"""The `codelm` command: the one place that wires the rooms together.

    codelm data prepare [--source stdlib] [--out data/stdlib] ...
    codelm data stats DIR
    codelm train [--config FILE] [--preset tiny] [--objective l2r] [--model.n_layer 4] ...
    codelm sample CHECKPOINT --prompt "def fib(n):" [--temperature 0.8 --top-p 0.95]
    codelm info [PRESET ...]          parameters and FLOPs/token of the presets
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
    print(f"shards: {path}  (tokenizer {index['tokenizer']['name']}, {index['dtype']})")
    for name, s in index["splits"].items():
        print(f"  {name:6s} {s['n_docs']:>7,} docs  {s['n_tokens']:>12,} tokens  {s['n_bytes']:>13,} bytes  "
              f"{s['n_bytes'] / max(1, s['n_tokens']):.2f} bytes/token")
    stages = index.get("manifest", {}).get("stages", [])
    if stages:
        print(f"  {'stage':22s} {'docs in':>9s} {'docs out':>9s} {'MB out':>8s}  removed")
        for st in stages:
            removed = ", ".join(f"{k}: {v}" for k, v in st.get("removed", {}).items()) or "-"
            print(f"  {st['name']:22s} {st['docs_in']:>9,} {st['docs_out']:>9,} {st['bytes_out'] / 1e6:>8.2f}  "
                  f"{removed}")


def cmd_data_stats(args) -> int:
    from codelm.data.shards import ShardSet

    shards = ShardSet(args.dir)
    print_shard_summary(args.dir, shards.index)
    return 0


# ----------------------------------------------------------------------------------------------------------------
# train / sample / info
# ----------------------------------------------------------------------------------------------------------------
def cmd_train(args) -> int:
    from codelm.train import TrainConfig, Trainer

    cfg = resolve_config(TrainConfig, args, args.config)  # --model.X flags land in cfg.model
    summary = Trainer(cfg).fit()
    print(json.dumps(summary, indent=2))
    return 0


def cmd_sample(args) -> int:
    from codelm.checkpoint import load_checkpoint
    from codelm.generate import SamplingParams, generate

    ckpt = load_checkpoint(args.checkpoint)
    prompt = Path(args.prompt_file).read_text() if args.prompt_file else args.prompt
    if prompt is None:
        raise UserError("give --prompt TEXT or --prompt-file FILE")
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                            top_p=args.top_p, stop=args.stop or [], seed=args.seed)
    for i in range(args.n):
        if args.n > 1:
            print(f"----- sample {i + 1}/{args.n}")
        params.seed = None if args.seed is None else args.seed + i
        sys.stdout.write(prompt)
        generate(ckpt.model, ckpt.tokenizer, prompt, params, on_text=lambda t: (sys.stdout.write(t),
                                                                                 sys.stdout.flush()))
        sys.stdout.write("\n")
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
    stats.set_defaults(func=cmd_data_stats)
    data.set_defaults(func=lambda a: (data.print_help(), 2)[1])

    train = sub.add_parser("train", help="train a model (l2r, fim, mim or a mixture)")
    train.add_argument("--config", help="TOML/JSON/YAML file with these options ([model] table for the model)")
    add_dataclass_arguments(train, TrainConfig)
    model_group = train.add_argument_group("model overrides (on top of --preset)")
    for name in ModelConfig.__dataclass_fields__:
        model_group.add_argument(f"--model.{name}", dest=f"model.{name}", default=UNSET, metavar="V",
                                 help=argparse.SUPPRESS if name in ("init_std",) else None)
    train.set_defaults(func=cmd_train)

    smp = sub.add_parser("sample", help="generate text from a checkpoint")
    smp.add_argument("checkpoint", help="checkpoint directory or run directory (its latest checkpoint)")
    smp.add_argument("--prompt", help="prompt text")
    smp.add_argument("--prompt-file", help="read the prompt from this file")
    smp.add_argument("--max-new-tokens", type=int, default=128, help="tokens to generate (default 128)")
    smp.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    smp.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = off)")
    smp.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    smp.add_argument("--stop", action="append", help="stop string (repeatable)")
    smp.add_argument("--n", type=int, default=1, help="number of samples")
    smp.add_argument("--seed", type=int, default=None, help="random seed")
    smp.set_defaults(func=cmd_sample)

    info = sub.add_parser("info", help="parameters and FLOPs/token of model presets")
    info.add_argument("presets", nargs="*", help="preset names (default: all)")
    info.set_defaults(func=cmd_info)

    _add_optional_commands(sub)
    return parser


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

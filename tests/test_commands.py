"""Every command the README and `make demo` show still parses (and the cheap ones run); every command's options come
from one dataclass (file + flags, the resolved values saved); the command line imports only what a command needs."""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from codelm.cli import build_parser, main
from codelm.config import resolve_config

ROOT = Path(__file__).resolve().parent.parent


def documented_commands() -> list[list[str]]:
    """`codelm ...` lines of the README's code blocks and the Makefile's demo, as argument lists after `codelm`.

    The README writes alternatives and optional parts for people: `fim|mim` takes the first, `[--plus]` is included,
    `...` (the rest of an earlier line) is dropped."""
    lines = []
    readme = (ROOT / "README.md").read_text()
    for block in re.findall(r"```bash\n(.*?)```", readme, flags=re.S):
        lines += block.replace("\\\n", " ").splitlines()  # a command continued on the next line is one command
    make = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    lines += [line.replace("$(BIN)/", "") for line in make.splitlines() if line.strip().startswith("$(BIN)/codelm ")]
    commands = []
    for line in lines:
        line = line.split(" # ")[0].strip()
        match = re.match(r"(?:codelm|\S*/codelm|.* -m codelm\.cli) (.*)", line)
        if not match:
            continue
        text = re.sub(r"\$\((\w+)\)", lambda m: {"DATA": "data/stdlib", "RUN": "runs/demo"}.get(m[1], "1"), match[1])
        text = re.sub(r"\"\$\$\(printf '([^']*)'\)\"", r"'\1'", text)  # the demo's printf-built arguments
        text = re.sub(r"\[([^]]*)\]", r"\1", text).replace("...", "")
        args = [re.sub(r"^([\w-]+)\|.*", r"\1", a) for a in shlex.split(text)]
        commands.append(args)
    return commands


COMMANDS = documented_commands()


def test_the_documented_commands_were_found():
    names = {args[0] for args in COMMANDS}
    assert {"data", "train", "sample", "infill", "eval", "serve", "export", "import-hf", "runs"} <= names
    assert len(COMMANDS) > 25


@pytest.mark.parametrize("args", COMMANDS, ids=[" ".join(a)[:60] for a in COMMANDS])
def test_every_documented_command_parses_and_resolves(args):
    parsed = build_parser(args[0]).parse_args(args)
    assert callable(parsed.func)
    if getattr(parsed, "options", None):  # the command's dataclass accepts every value given
        resolve_config(parsed.options, parsed, None)


def test_every_command_has_help(capsys):
    from codelm.cli import COMMANDS as names
    for name in names:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
        assert f"usage: codelm {name}" in capsys.readouterr().out


def test_cheap_documented_commands_run(tmp_path, capsys, monkeypatch):
    from evals import humaneval

    assert main(["info"]) == 0
    assert "tiny" in capsys.readouterr().out
    # the README's `codelm eval humaneval --samples samples.jsonl`, on three canonical solutions
    monkeypatch.chdir(tmp_path)
    problems = humaneval.load().problems
    rows = [{"task_id": t, "completion": problems[t]["canonical_solution"]} for t in list(problems)[:3]]
    Path("samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["eval", "humaneval", "--samples", "samples.jsonl", "--limit", "3"]) == 0
    out = tmp_path / "samples_humaneval_results"
    assert json.loads((out / "summary.json").read_text())["pass@1"] == 1.0
    saved = json.loads((out / "eval_config.json").read_text())  # the resolved options, defaults included
    assert (saved["samples"], saved["limit"], saved["max_new_tokens"], saved["k"]) == ("samples.jsonl", 3, 512, ["1"])


# --- one configuration system ----------------------------------------------------------------------------------------
def parse(argv):
    args = build_parser(argv[0]).parse_args(argv)
    return resolve_config(args.options, args, args.config)


def test_sample_infill_eval_and_serve_read_a_file_and_flags_override_it(tmp_path):
    conf = tmp_path / "opts.toml"
    conf.write_text('temperature = 0.5\nmax_new_tokens = 9\nstop = ["\\n\\n", "def "]\n'
                    'checkpoint = "runs/x"\n')
    sample = parse(["sample", "--config", str(conf), "--temperature", "0.7"])
    assert (sample.checkpoint, sample.temperature, sample.max_new_tokens, sample.stop) == (
        "runs/x", 0.7, 9, ["\n\n", "def "])
    infill = parse(["infill", "runs/y", "--mode", "mim", "--stop", "a", "--stop", "b"])
    assert (infill.checkpoint, infill.mode, infill.max_new_tokens, infill.stop) == ("runs/y", "mim", 64, ["a", "b"])
    serve_conf = tmp_path / "serve.json"
    serve_conf.write_text(json.dumps({"port": 9001, "max_batch": 2, "cors_origins": ["http://a.test"]}))
    serve = parse(["serve", "runs/z", "--config", str(serve_conf), "--max-batch", "4", "--no-raw-fim"])
    assert (serve.port, serve.max_batch, serve.cors_origins, serve.raw_fim) == (9001, 4, ["http://a.test"], False)
    eval_conf = tmp_path / "eval.yaml"
    eval_conf.write_text("n: 20\nk: ['1', '10']\nplus: true\n")
    ev = parse(["eval", "mbpp", "runs/m", "--config", str(eval_conf), "--temperature", "0.8"])
    assert (ev.benchmark, ev.model, ev.n, ev.k, ev.plus, ev.temperature) == ("mbpp", "runs/m", 20, ["1", "10"], True,
                                                                             0.8)


def test_training_evaluation_export_and_import_options_are_dataclasses_too():
    from evals.cli import TrainingEvalOptions
    args = build_parser("train").parse_args(["train", "--eval-infill-every", "4", "--eval-infill-mode", "mim"])
    opts = resolve_config(TrainingEvalOptions, args)
    assert (opts.eval_infill_every, opts.eval_infill_mode, opts.eval_infill_limit) == (4, "mim", 20)
    assert resolve_config(args.options, args).steps == 1000  # and the trainer's own options ignore them
    # evaluation during training keeps the codelm backend (the model in memory): a backend option is refused
    with pytest.raises(SystemExit) as e:
        build_parser("train").parse_args(["train", "--eval-infill-every", "4", "--backend", "transformers"])
    assert e.value.code == 2
    export = parse(["export", "runs/t", "--hf", "out/hf", "--dtype", "bfloat16"])
    assert (export.checkpoint, export.hf, export.dtype) == ("runs/t", "out/hf", "bfloat16")
    assert parse(["import-hf", "hf/dir", "--out", "ckpt"]).out == "ckpt"


def test_a_bool_option_alone_means_true_and_does_not_swallow_the_next_argument():
    ev = parse(["eval", "humaneval", "--plus", "runs/tiny"])
    assert (ev.plus, ev.model) == (True, "runs/tiny")
    assert parse(["eval", "humaneval", "--plus", "false", "runs/tiny"]).plus is False
    assert parse(["infill", "--json", "ckpt"]).json is True
    assert parse(["train", "--resume", "--out", "runs/t"]).resume is True
    assert parse(["train", "--resume", "no"]).resume is False


@pytest.mark.parametrize("argv, message", [
    (["sample", "ckpt", "--temperature", "hot"], "bad value for --temperature: 'hot'"),
    (["serve", "ckpt", "--port", "80.5"], "bad value for --port"),
    (["eval", "infilling", "--set", "all-lines"], "invalid choice: 'all-lines'"),
    (["infill", "ckpt", "--mode", "xyz"], "invalid choice: 'xyz'"),
    (["sample", "ckpt", "--prompt", "x", "--n", "0"], "--n must be >= 1"),
    (["serve", "ckpt", "--max-batch", "0"], "--max-batch must be at least 1"),
    (["sample", "--prompt", "x"], "give a CHECKPOINT"),
])
def test_bad_options_give_one_line_and_exit_2(argv, message, capsys):
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_a_config_file_is_checked_like_flags(tmp_path, capsys):
    conf = tmp_path / "bad.toml"
    conf.write_text('mode = "xyz"\n')
    assert main(["infill", "ckpt", "--config", str(conf)]) == 2
    assert "bad value for mode: 'xyz' is not one of fim, mim" in capsys.readouterr().err
    conf.write_text('temprature = 0.5\n')
    assert main(["sample", "ckpt", "--config", str(conf)]) == 2
    assert f"{conf}: unknown key 'temprature'; did you mean 'temperature'?" in capsys.readouterr().err


# --- a light command line ---------------------------------------------------------------------------------------------
def modules_loaded_by(argv: list[str], cwd) -> set[str]:
    code = ("import sys\nfrom codelm.cli import main\ntry:\n    main(%r)\nexcept SystemExit:\n    pass\n"
            "print('LOADED', ' '.join(sorted(m for m in sys.modules if '.' not in m)))" % argv)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=300)
    line = [l for l in proc.stdout.splitlines() if l.startswith("LOADED")]
    assert line, proc.stderr
    return set(line[0].split()[1:])


def test_help_and_scoring_samples_import_no_torch(tmp_path):
    from evals import humaneval

    heavy = {"torch", "numpy", "fastapi", "transformers", "safetensors", "tiktoken"}
    assert not modules_loaded_by(["--help"], tmp_path) & heavy
    assert not modules_loaded_by(["eval", "humaneval", "--help"], tmp_path) & heavy
    problem = humaneval.load().problems["HumanEval/0"]
    (tmp_path / "s.jsonl").write_text(json.dumps({"task_id": "HumanEval/0",
                                                  "completion": problem["canonical_solution"]}) + "\n")
    loaded = modules_loaded_by(["eval", "humaneval", "--samples", "s.jsonl", "--limit", "1"], tmp_path)
    assert "evals" in loaded and not loaded & heavy
    assert json.loads((tmp_path / "s_humaneval_results" / "summary.json").read_text())["pass@1"] == 1.0


def test_a_new_option_is_one_field_wherever_its_flags_are_shown():
    """What another issue does to add an option: a field. Its flag, file key, bare bool form and --no- form follow,
    in an argument group too."""
    from dataclasses import dataclass

    from codelm.config import ArgumentParser, add_dataclass_arguments, option

    @dataclass
    class Options:
        model: str = option("", "a model", positional=True)
        trust_remote_code: bool = option(False, "run the model's own code")
        backend: str = option("auto", "which backend", choices=("auto", "codelm", "vllm"))

    parser = ArgumentParser(prog="x")
    add_dataclass_arguments(parser.add_argument_group("backends"), Options)
    cfg = resolve_config(Options, parser.parse_args(["--trust-remote-code", "m", "--backend", "vllm"]))
    assert (cfg.model, cfg.trust_remote_code, cfg.backend) == ("m", True, "vllm")
    assert resolve_config(Options, parser.parse_args(["m", "--no-trust-remote-code"])).trust_remote_code is False
    assert resolve_config(Options, parser.parse_args(["m"])).backend == "auto"

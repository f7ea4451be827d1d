"""The CLI's contract with users: one clear error line and exit code 2 for their mistakes, never a traceback."""
import subprocess
import sys

import pytest

from codelm.cli import main


def run_cli(*args):
    proc = subprocess.run([sys.executable, "-m", "codelm.cli", *args], capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize("args,message", [
    (["train", "--preset", "huge"], "unknown preset 'huge'"),
    (["train", "--lr", "fast"], "bad value for --lr: 'fast'"),
    (["train", "--data", "/nonexistent/shards"], "/nonexistent/shards/index.json: missing"),
    (["train", "--objective", "xyz"], "unknown objective 'xyz'"),
    (["train", "--bogus", "1"], "unrecognized arguments: --bogus"),
    (["train", "--config", "/nonexistent.toml"], "config file not found: /nonexistent.toml"),
    (["sample", "/nonexistent/run", "--prompt", "x"], "no such checkpoint or run directory"),
    (["data", "stats", "/nonexistent"], "index.json: missing"),
])
def test_user_mistakes_give_one_line_and_exit_2(args, message, capsys):
    code = main_exit_code(args)
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def main_exit_code(args):
    try:
        return main(args)
    except SystemExit as e:
        return e.code


def test_malformed_config_file_is_named(tmp_path, capsys):
    bad = tmp_path / "train.toml"
    bad.write_text("steps = [unclosed\n")
    assert main_exit_code(["train", "--config", str(bad)]) == 2
    assert f"cannot parse config file {bad}" in capsys.readouterr().err


def test_config_file_and_flags_layer(tmp_path, small_shards):
    from codelm.config import resolve_config
    from codelm.train import TrainConfig
    from codelm.cli import build_parser
    cfg_file = tmp_path / "train.toml"
    cfg_file.write_text('steps = 7\nlr = 0.01\n[model]\nn_layer = 3\n')
    args = build_parser().parse_args(["train", "--config", str(cfg_file), "--lr", "0.02", "--model.d_model", "96"])
    cfg = resolve_config(TrainConfig, args, args.config)
    assert (cfg.steps, cfg.lr, cfg.model) == (7, 0.02, {"n_layer": 3, "d_model": "96"})


def test_end_to_end_prepare_train_sample(tmp_path, small_shards):
    """The README's path in miniature, through the real command line."""
    run = tmp_path / "run"
    code, out, err = run_cli("train", "--data", str(small_shards), "--out", str(run), "--steps", "6",
                             "--batch-size", "2", "--context-length", "32", "--model.n_layer", "1",
                             "--model.d_model", "64", "--model.n_head", "2", "--eval-tokens", "256",
                             "--precision", "fp32")
    assert code == 0, err
    assert "step 6/6" in err and "val_l2r_bpb" in out
    code, out, err = run_cli("sample", str(run), "--prompt", "import os\n", "--max-new-tokens", "8")
    assert code == 0, err
    assert out.startswith("import os\n")
    code, out, err = run_cli("data", "stats", str(small_shards))
    assert code == 0 and "train" in out

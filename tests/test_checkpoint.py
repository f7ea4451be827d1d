import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from codelm.checkpoint import list_checkpoints, resolve_checkpoint, save_checkpoint
from codelm.loader import load_checkpoint
from codelm.errors import CheckpointError
from codelm.model import ModelConfig, Transformer


def micro_model(seed=0):
    torch.manual_seed(seed)
    return Transformer(ModelConfig(vocab_size=16448, context_length=32, n_layer=1, n_head=2, d_model=32))


def test_round_trip(tmp_path, tokenizer):
    model = micro_model()
    path = save_checkpoint(tmp_path / "ck", model, tokenizer)
    ck = load_checkpoint(path)
    x = torch.randint(0, 16000, (1, 8))
    torch.testing.assert_close(ck.model(x), model.eval()(x))
    assert ck.tokenizer.hash == tokenizer.hash
    assert ck.capabilities["markers"]["l2r"] == tokenizer.l2r_id
    assert json.loads((path / "config.json").read_text())["code_version"]


def test_run_directory_means_latest_checkpoint(tmp_path, tokenizer):
    for step in (5, 20, 10):
        save_checkpoint(tmp_path / "run" / "checkpoints" / f"step_{step:07d}", micro_model(step), tokenizer)
    assert resolve_checkpoint(tmp_path / "run").name == "step_0000020"
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step_0000005", "step_0000010", "step_0000020"]


def test_corrupt_config_is_named(tmp_path, tokenizer):
    path = save_checkpoint(tmp_path / "ck", micro_model(), tokenizer)
    (path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json: corrupt JSON"):
        load_checkpoint(path)


def test_truncated_weights_are_named(tmp_path, tokenizer):
    path = save_checkpoint(tmp_path / "ck", micro_model(), tokenizer)
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="model.safetensors: truncated"):
        load_checkpoint(path)


def test_garbage_weights_are_named(tmp_path, tokenizer):
    path = save_checkpoint(tmp_path / "ck", micro_model(), tokenizer)
    config = json.loads((path / "config.json").read_text())
    config["files"] = {}
    (path / "config.json").write_text(json.dumps(config))
    (path / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="corrupt safetensors"):
        load_checkpoint(path)


def test_mismatched_config_is_named(tmp_path, tokenizer):
    path = save_checkpoint(tmp_path / "ck", micro_model(), tokenizer)
    config = json.loads((path / "config.json").read_text())
    config["model"]["d_model"] = 64
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="shape"):
        load_checkpoint(path)


def test_missing_paths_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="neither a checkpoint"):
        load_checkpoint(tmp_path / "empty")


def test_a_save_killed_midway_leaves_the_previous_checkpoint_loadable(tmp_path, tokenizer):
    """SIGKILL a process that keeps overwriting checkpoints; whatever moment it dies, the latest loads."""
    run = tmp_path / "run"
    save_checkpoint(run / "checkpoints" / "step_0000000", micro_model(), tokenizer)
    script = textwrap.dedent(f"""
        import torch
        from codelm.checkpoint import save_checkpoint
        from codelm.model import ModelConfig, Transformer
        from codelm.tokenizer import get_tokenizer
        tok = get_tokenizer("cl100k_base:16384")
        model = Transformer(ModelConfig(vocab_size=16448, context_length=32, n_layer=4, n_head=2, d_model=256))
        step = 1
        print("ready", flush=True)
        while True:
            save_checkpoint({str(run)!r} + f"/checkpoints/step_{{step % 3 + 1:07d}}", model, tok)
            step += 1
    """)
    for delay in (0.05, 0.2, 0.45, 0.8):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
        proc.stdout.readline()
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for ck in list_checkpoints(run):
            load_checkpoint(ck)  # every complete-looking checkpoint must load
        load_checkpoint(run)


def test_checkpoint_files_are_readable_by_other_users(tmp_path, tokenizer):
    """Serving a mounted checkpoint as an unprivileged user (the Docker image runs as nobody) must work."""
    import stat
    old = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path / "ck", micro_model(), tokenizer, train_state={"step": 1})
    finally:
        os.umask(old)
    for f in path.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f.name

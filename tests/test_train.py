import json

import numpy as np
import pytest

from codelm.checkpoint import list_checkpoints
from codelm.loader import load_checkpoint
from codelm.generate import SamplingParams, generate
from codelm.train import Trainer, TrainConfig, lr_at, sample_windows
from support import assert_resume_is_bit_exact, micro_train_config


def test_loss_goes_down_and_checkpoint_samples(trained_run):
    metrics = [json.loads(l) for l in (trained_run / "metrics.jsonl").read_text().splitlines()]
    train = [m["loss"] for m in metrics if m["kind"] == "train"]
    assert train[-1] < train[0] - 1.0
    val = [m for m in metrics if m["kind"] == "val"][-1]
    assert val["val_l2r_bpb"] > 0 and val["val_l2r"] < train[0]
    ck = load_checkpoint(trained_run)
    assert ck.capabilities["objectives"] == {"l2r": 1.0}
    assert ck.meta["step"] == 40
    text = generate(ck.model, ck.tokenizer, "def ", SamplingParams(max_new_tokens=16, temperature=0.8, seed=1))
    assert isinstance(text, str) and len(text) > 0
    assert json.loads((trained_run / "config.json").read_text())["train"]["steps"] == 40


def test_windows_are_a_pure_function_of_seed_and_step():
    tokens = np.arange(10_000, dtype=np.uint16)
    a, _ = sample_windows(tokens, 4, 32, seed=1, step=7, micro=0)
    b, _ = sample_windows(tokens, 4, 32, seed=1, step=7, micro=0)
    c, _ = sample_windows(tokens, 4, 32, seed=1, step=8, micro=0)
    assert (a == b).all() and not (a == c).all()
    assert (np.diff(a, axis=1) == 1).all()  # contiguous slices


def test_schedule_warmup_then_cosine_to_floor():
    cfg = TrainConfig(lr=1.0, min_lr_ratio=0.1, warmup_steps=10, steps=110)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55)
    assert lr_at(110, cfg) == pytest.approx(0.1)


def test_resume_continues_bit_for_bit(tmp_path, small_shards):
    assert_resume_is_bit_exact(small_shards, tmp_path, stop_at=6, steps=12)


def test_keep_last_prunes_old_checkpoints(tmp_path, small_shards):
    Trainer(micro_train_config(small_shards, tmp_path / "r", steps=8, save_every=2, keep_last=2)).fit()
    assert [p.name for p in list_checkpoints(tmp_path / "r")] == ["step_0000006", "step_0000008"]


def test_tokenizer_mismatch_between_model_and_shards_is_refused(tmp_path, small_shards):
    from codelm.errors import TokenizerMismatch
    cfg = micro_train_config(small_shards, tmp_path / "r")
    cfg.model["tokenizer"] = "cl100k_base:8192"
    with pytest.raises(TokenizerMismatch, match="shard directory"):
        Trainer(cfg)


def test_a_short_validation_split_shortens_the_validation_window_instead_of_losing_the_run(tmp_path, tokenizer,
                                                                                          caplog):
    """Tried by a user on a small corpus: all steps ran, then the final validation stopped the run with no
    checkpoint. Now the validation window shrinks to what the split holds, with a warning at the start."""
    from support import make_shards, stdlib_texts
    data = make_shards(tmp_path / "shards", stdlib_texts(12), tokenizer, val_texts=["x = 1\nprint(x)\n"])
    n_val = len(tokenizer.encode("x = 1\nprint(x)\n")) + 1
    assert n_val < 64
    cfg = micro_train_config(data, tmp_path / "run", steps=4, context_length=64, log_every=2)
    with caplog.at_level("WARNING"):
        summary = Trainer(cfg).fit()
    assert f"fewer than one window of 64: validating on windows of {n_val - 1}" in caplog.text
    assert np.isfinite(summary["val_l2r"])
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step_0000004"]


def test_the_final_checkpoint_is_written_before_the_final_evaluation(small_shards, tmp_path):
    """Whatever fails after the last step (here an evaluation callback), the trained model is on disk."""
    def failing_callback(trainer, step):
        raise RuntimeError("the benchmark went away")

    cfg = micro_train_config(small_shards, tmp_path / "run", steps=3)
    with pytest.raises(RuntimeError, match="went away"):
        Trainer(cfg, callbacks=[failing_callback]).fit()
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step_0000003"]


@pytest.mark.slow
def test_the_same_command_gives_the_same_losses_while_other_processes_load_every_core(small_shards, tmp_path):
    """Same command, same seed: identical losses at every step, even when the runs compete with each other and with
    busy loops for both cores (MKL's dynamic threading and alignment-dependent branches are pinned off)."""
    import os
    import subprocess
    import sys

    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    try:
        runs = [subprocess.Popen([sys.executable, "-m", "codelm.cli", "train", "--data", str(small_shards),
                                  "--out", str(tmp_path / f"run{i}"), "--preset", "tiny", "--model.n_layer", "2",
                                  "--model.d_model", "128", "--model.n_head", "2", "--context-length", "64",
                                  "--batch-size", "8", "--steps", "4", "--log-every", "1", "--eval-every", "0",
                                  "--save-every", "0", "--objective", "mim:0.5,fim:0.5", "--seed", "0",
                                  "--peak-flops", "1e9"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(2)]
        for proc in runs:
            assert proc.wait(timeout=600) == 0, proc.stderr.read()
    finally:
        for b in burners:
            b.kill()
    losses = []
    for i in range(2):
        rows = [json.loads(line) for line in (tmp_path / f"run{i}" / "metrics.jsonl").read_text().splitlines()]
        losses.append([r["loss"] for r in rows if r["kind"] == "train"])
    assert len(losses[0]) == 4
    assert losses[0] == losses[1]


def test_compile_is_automatic_for_runs_long_enough_to_repay_it():
    """--compile unset: the demo's run (300 tiny-preset steps of 16 x 256 tokens) compiles on a 2-core machine's
    bf16 peak (~850 GFLOP/s); a 20-step run of the tests' micro model does not; a faster machine needs more steps."""
    from codelm.model import flops_per_token, preset_config
    from codelm.train import compile_repays
    tiny = flops_per_token(preset_config("tiny"), 256)["train"]
    assert compile_repays(300, 16 * 256, tiny, 850e9)
    assert not compile_repays(20, 16 * 256, tiny, 850e9)
    assert not compile_repays(300, 16 * 256, tiny, 850e12)  # a GPU runs the same steps in a second
    micro = flops_per_token(preset_config("tiny", n_layer=2, n_head=2, d_model=64, context_length=128), 128)["train"]
    assert not compile_repays(20, 4 * 64, micro, 850e9)


@pytest.mark.parametrize("max_norm", [0.05, 1e6])  # clipping, and a norm under the limit (divides by exactly 1)
def test_clipping_folded_into_the_fused_optimizer_takes_the_clip_then_step_update(max_norm):
    """clip_gradients hands the fused AdamW the clip coefficient instead of scaling every gradient first: the
    parameters after two steps equal clip_grad_norm_ then step, and the returned norm is the unclipped one."""
    import torch
    from codelm.train import clip_gradients

    def run(folded):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 3))
        opt = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
        norms = []
        for step in range(2):
            model(torch.randn(5, 8, generator=torch.Generator().manual_seed(step))).square().sum().backward()
            if folded:
                norms.append(float(clip_gradients(model, opt, max_norm)))
            else:
                norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)))
            opt.step()
            opt.__dict__.pop("grad_scale", None)
            opt.zero_grad(set_to_none=True)
        return [p.detach().clone() for p in model.parameters()], norms

    (params_f, norms_f), (params_c, norms_c) = run(True), run(False)
    assert norms_f == pytest.approx(norms_c, rel=1e-6) and min(norms_c) > 0.05
    for a, b in zip(params_f, params_c):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)

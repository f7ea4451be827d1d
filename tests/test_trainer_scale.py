"""The trainer at scale: schedules, recipes, accumulation, exact resume, DDP/FSDP on 2 CPU processes, continued
pretraining with a blend switch, variable context, precision. Small real runs of a micro model."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from codelm.checkpoint import list_checkpoints
from codelm.loader import load_checkpoint
from codelm.errors import ConfigError
from codelm.schedules import (context_at, fit_batch, lr_multiplier, parse_context_schedule, parse_schedule,
                              switch_step)
from codelm.train import TrainConfig, Trainer, apply_recipe, lr_at, sample_windows
from support import MICRO_MODEL, micro_train_config


def losses(run):
    return [m["loss"] for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if m["kind"] == "train"]


def train_records(run):
    return [m for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if m["kind"] == "train"]


def assert_same_params(a, b, exact=True):
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        if exact:
            assert torch.equal(p, q), name
        else:
            # summation order differs (micro-batches, all-reduce); Adam's 1/sqrt(v) magnifies that in rows with
            # tiny gradients to ~1e-5, against updates of lr x steps ~ 1e-2
            torch.testing.assert_close(p, q, rtol=1e-4, atol=3e-5, msg=name)


# ----------------------------------------------------------------------------------------------------------------
# Schedules
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", ["cosine", "linear", "polynomial", "polynomial:3", "inv-sqrt", "wsd",
                                      "wsd:0.5", "constant"])
def test_every_schedule_warms_up_linearly_then_never_rises(schedule):
    mult = [lr_multiplier(s, 200, 20, schedule, 0.1) for s in range(201)]
    assert mult[:20] == pytest.approx([(s + 1) / 20 for s in range(20)])
    after = mult[20:]
    assert after[0] == pytest.approx(1.0, abs=0.06)
    assert all(b <= a + 1e-12 for a, b in zip(after, after[1:]))
    assert min(after) >= 0.1 - 1e-12


@pytest.mark.parametrize("schedule", ["cosine", "linear", "polynomial", "wsd"])
def test_decaying_schedules_end_at_the_floor(schedule):
    assert lr_multiplier(200, 200, 20, schedule, 0.1) == pytest.approx(0.1)


def test_schedule_shapes():
    # cosine is halfway at mid-decay; wsd stays flat until its last 20%, then decays linearly
    assert lr_multiplier(110, 200, 20, "cosine", 0.0) == pytest.approx(0.5)
    assert lr_multiplier(163, 200, 20, "wsd", 0.1) == 1.0
    assert lr_multiplier(182, 200, 20, "wsd", 0.1) == pytest.approx(1 - 0.9 * 18 / 36)
    assert lr_multiplier(79, 200, 20, "inv-sqrt", 0.01) == pytest.approx((20 / 80) ** 0.5)
    assert lr_multiplier(110, 200, 20, "polynomial", 0.0) == pytest.approx(0.25)
    cfg = TrainConfig(lr=2.0, min_lr_ratio=0.1, warmup_steps=0, steps=100, schedule="linear")
    assert lr_at(0, cfg) == 2.0 and lr_at(50, cfg) == pytest.approx(1.1)


@pytest.mark.parametrize("bad", ["cosin", "wsd:2", "polynomial:x", "polynomial:-1"])
def test_bad_schedule_is_a_user_error(bad):
    with pytest.raises(ConfigError, match="schedule"):
        parse_schedule(bad)


def test_switch_happens_when_the_lr_falls_to_a_fifth_of_the_peak():
    step = switch_step(1000, 0, "cosine", 0.01, 0.2)
    assert lr_multiplier(step, 1000, 0, "cosine", 0.01) <= 0.2 < lr_multiplier(step - 1, 1000, 0, "cosine", 0.01)
    assert switch_step(100, 0, "constant", 0.1, 0.2) == 100  # never that low: never switch


def test_context_schedule():
    sched = parse_context_schedule("0.75:2048,1.0:8192")
    assert [context_at(s, 100, sched) for s in (0, 74, 75, 99)] == [2048, 2048, 8192, 8192]
    for bad in ("0.75:2048", "1.0:x", "0.8:64,0.5:128"):
        with pytest.raises(ConfigError, match="context-schedule"):
            parse_context_schedule(bad)


# ----------------------------------------------------------------------------------------------------------------
# Recipes and batch arithmetic
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("recipe,lr,warmup", [("mim-350m", 3e-4, 7000), ("mim-1.3b", 2e-4, 5000),
                                              ("mim-2.7b", 2e-4, 5000)])
def test_mim_recipes_use_the_papers_values_and_million_token_batches(recipe, lr, warmup):
    cfg = apply_recipe(TrainConfig(recipe=recipe))
    assert (cfg.lr, cfg.warmup_steps, cfg.schedule, cfg.min_lr_ratio, cfg.context_length) == \
        (lr, warmup, "cosine", 0.1, 2048)
    assert cfg.preset == recipe.split("-")[1]
    for world in (1, 8, 64):
        batch, accum = fit_batch(cfg.global_batch, 16, world)
        assert batch * accum * world * cfg.context_length == 1_048_576


def test_explicit_options_beat_the_recipe():
    assert apply_recipe(TrainConfig(recipe="mim-350m", lr=1e-4)).lr == 1e-4
    # the CLI knows what was typed, even a value equal to the default
    assert apply_recipe(TrainConfig(recipe="mim-350m"), explicit={"lr"}).lr == 1e-3
    with pytest.raises(ConfigError, match="recipe"):
        apply_recipe(TrainConfig(recipe="gpt-5"))


def test_continued_recipe_starts_at_the_pretraining_final_lr():
    cfg = apply_recipe(TrainConfig(recipe="continued"), pretraining={"lr_peak": 3e-4, "lr_final": 3e-5})
    assert cfg.warmup_steps == 0 and cfg.lr == 3e-5
    assert cfg.lr * cfg.min_lr_ratio == pytest.approx(3e-6)  # 1/100 of the pretraining peak
    assert lr_at(0, cfg) == pytest.approx(3e-5)


# ----------------------------------------------------------------------------------------------------------------
# Data order: the global batch is independent of how it is split
# ----------------------------------------------------------------------------------------------------------------
def test_global_batch_is_the_same_however_it_is_split():
    tokens = np.arange(50_000, dtype=np.uint16)
    whole, _ = sample_windows(tokens, 8, 16, seed=3, step=5)
    for world, accum in ((2, 1), (1, 4), (2, 2), (4, 2)):
        b = 8 // (world * accum)
        parts = [sample_windows(tokens, b, 16, 3, 5, micro=m, rank=r, world=world, grad_accum=accum)[0]
                 for m in range(accum) for r in range(world)]
        assert np.array_equal(np.concatenate(parts), whole)


# ----------------------------------------------------------------------------------------------------------------
# Accumulation, exact resume, interruption
# ----------------------------------------------------------------------------------------------------------------
def test_grad_accumulation_takes_the_same_step_as_one_big_batch(tmp_path, small_shards):
    big = Trainer(micro_train_config(small_shards, tmp_path / "big", steps=2, batch_size=4, plot=False,
                                     eval_tokens=256))
    big.fit()
    acc = Trainer(micro_train_config(small_shards, tmp_path / "acc", steps=2, batch_size=1, grad_accum=4,
                                     plot=False, eval_tokens=256))
    acc.fit()
    assert_same_params(big.model, acc.model, exact=False)
    assert losses(tmp_path / "big") == pytest.approx(losses(tmp_path / "acc"), rel=1e-5)


def test_resume_is_exact_with_accumulation_schedules_and_a_blend_switch(tmp_path, small_shards):
    opts = dict(steps=6, batch_size=1, grad_accum=2, schedule="wsd:0.5", log_every=1, plot=False,
                data_switch=str(small_shards), switch_at_lr_fraction=0.6, eval_tokens=256)
    full = Trainer(micro_train_config(small_shards, tmp_path / "full", **opts))
    assert 0 < full.switch_at < 6
    full.fit()
    Trainer(micro_train_config(small_shards, tmp_path / "part", **opts)).fit(stop_at=3)
    # a run killed after logging step 4 but before saving it: the stale line must not survive the resume
    with open(tmp_path / "part" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"kind": "train", "step": 4, "tokens": 0, "loss": 99.0}) + "\n{\"kind\": \"tr")
    resumed = Trainer(micro_train_config(small_shards, tmp_path / "part", resume=True, **opts))
    assert resumed.step == 3
    resumed.fit()
    assert_same_params(full.model, resumed.model)
    assert losses(tmp_path / "full") == losses(tmp_path / "part")


def test_a_crash_while_saving_leaves_the_previous_checkpoint_resumable(tmp_path, small_shards, monkeypatch):
    cfg = micro_train_config(small_shards, tmp_path / "r", steps=4, save_every=2, plot=False)
    trainer = Trainer(cfg)
    trainer.fit(stop_at=2)

    def killed(*a, **k):
        raise KeyboardInterrupt  # the process dies in the middle of writing trainer.pt

    trainer.cfg.save_every = 1
    monkeypatch.setattr(torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    monkeypatch.undo()
    assert [p.name for p in list_checkpoints(tmp_path / "r")] == ["step_0000002"]
    assert Trainer(micro_train_config(small_shards, tmp_path / "r", steps=4, resume=True)).step == 2


# ----------------------------------------------------------------------------------------------------------------
# Two processes: DDP and FSDP2 on gloo take the single-process step with the combined batch
# ----------------------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_train(data, out, parallel, **opts):
    args = {"data": data, "out": out, "preset": "tiny", "parallel": parallel, "threads": 1, "plot": False,
            "precision": "fp32", "seed": 0, "context-length": 64, "lr": 3e-3, "warmup-steps": 2, "eval-every": 0,
            "eval-tokens": 512, "log-every": 1, **opts}
    model = [f"--model.{k}={v}" for k, v in MICRO_MODEL.items()]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), "-m", "codelm.cli", "train",
           *[f"--{k}={v}" for k, v in args.items()], *model]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_take_the_single_process_step(tmp_path, small_shards, parallel):
    run = tmp_path / parallel
    proc = torchrun_train(small_shards, run, parallel, steps=4, **{"batch-size": 2, "grad-accum": 2,
                                                                   "save-every": 2})
    assert proc.stdout.count('"step": 4') == 1  # one summary: only rank 0 reports
    single = Trainer(micro_train_config(small_shards, tmp_path / "one", steps=4, batch_size=4, grad_accum=2,
                                        log_every=1, plot=False))
    single.fit()
    # the checkpoint written by two processes loads in one, and holds the single-process weights
    ck = load_checkpoint(run)
    assert ck.meta["step"] == 4
    assert_same_params(single.model, ck.model, exact=False)
    assert losses(run) == pytest.approx(losses(tmp_path / "one"), rel=1e-5)
    assert json.loads((run / "config.json").read_text())["parallel"] == parallel
    # and a single process resumes it (optimizer state keyed by name), the global batch unchanged
    resumed = Trainer(micro_train_config(small_shards, run, steps=5, batch_size=4, grad_accum=2, resume=True,
                                         plot=False, log_every=1))
    assert resumed.step == 4
    resumed.fit()
    assert losses(run)[-1] < losses(run)[0]


# ----------------------------------------------------------------------------------------------------------------
# Continued pretraining, variable context, precision, activation checkpointing
# ----------------------------------------------------------------------------------------------------------------
def test_continued_pretraining_from_a_checkpoint(tmp_path, small_shards, trained_run):
    cfg = micro_train_config(small_shards, tmp_path / "cpt", steps=10, recipe="continued", init_from=str(trained_run),
                             data_switch=str(small_shards), log_every=1, plot=False)
    cfg.model = {}
    given = {"data", "out", "model", "steps", "batch_size", "context_length", "eval_every", "eval_tokens",
             "save_every", "log_every", "precision", "seed", "init_from", "data_switch", "plot", "recipe"}
    trainer = Trainer(cfg, explicit=given)  # as the CLI does: lr and warmup were not given, the recipe sets them
    init = load_checkpoint(trained_run)
    assert_same_params(init.model, trainer.model)
    # the pretraining run (lr 3e-3, floor 10%) ended at 3e-4: start there, no warmup, decay to 3e-5
    assert trainer.cfg.warmup_steps == 0 and trainer.cfg.lr == pytest.approx(3e-4)
    assert lr_at(trainer.cfg.steps, trainer.cfg) == pytest.approx(3e-5)
    assert 0 < trainer.switch_at < 10
    trainer.fit()
    records = train_records(tmp_path / "cpt")
    assert records[0]["lr"] == pytest.approx(3e-4)
    assert records[0]["loss"] < 7.0  # it starts from the trained model, not from scratch (ln 16448 = 9.7)


def test_init_from_fixes_the_architecture(tmp_path, small_shards, trained_run):
    cfg = micro_train_config(small_shards, tmp_path / "x", init_from=str(trained_run))
    cfg.model = {"n_layer": 3}
    with pytest.raises(ConfigError, match="context_length"):
        Trainer(cfg)


def test_variable_context_schedule(tmp_path, small_shards):
    cfg = micro_train_config(small_shards, tmp_path / "ctx", steps=4, batch_size=4, context_schedule="0.5:32,1.0:64",
                             log_every=1, plot=False)
    trainer = Trainer(cfg)
    assert [trainer.context_at(s) for s in range(4)] == [32, 32, 64, 64]
    assert [trainer.batch_at(c) for c in (32, 64)] == [4, 2]  # tokens per micro-batch stay constant
    trainer.fit()
    records = train_records(tmp_path / "ctx")
    assert [r["context"] for r in records] == [32, 32, 64, 64]
    assert [r["tokens"] for r in records] == [128, 256, 384, 512]
    too_long = micro_train_config(small_shards, tmp_path / "y", context_schedule="0.5:64,1.0:256")
    with pytest.raises(ConfigError, match="--model.context_length 256"):
        Trainer(too_long)


def test_activation_checkpointing_changes_memory_not_results(tmp_path, small_shards):
    plain = Trainer(micro_train_config(small_shards, tmp_path / "a", steps=2, plot=False))
    plain.fit()
    ckpt = Trainer(micro_train_config(small_shards, tmp_path / "b", steps=2, activation_checkpointing=True,
                                      plot=False))
    ckpt.fit()
    assert_same_params(plain.model, ckpt.model, exact=False)
    assert [n for n, _ in plain.model.named_parameters()] == [n for n, _ in ckpt.model.named_parameters()]


@pytest.mark.slow
def test_compiled_blocks_train_like_eager_and_keep_parameter_names(tmp_path, small_shards):
    """--compile (torch.compile per block and the losses' chunk kernels, ~10-30 s on CPU): a speed option only.
    Validation stays eager. A mixture (with seed 0 its fifth step draws mim): both loss kernels train."""
    mixture = "l2r:0.5,mim:0.5"
    eager = Trainer(micro_train_config(small_shards, tmp_path / "a", steps=5, objective=mixture, plot=False,
                                       log_every=1))
    eager.fit()
    compiled = Trainer(micro_train_config(small_shards, tmp_path / "b", steps=5, objective=mixture, compile=True,
                                          plot=False, log_every=1))
    assert all(o.compiled_loss for o in compiled.objectives.values())
    compiled.fit()
    drawn = [{k for k in r if k.startswith("loss_")} for r in train_records(tmp_path / "b")]
    assert {"loss_l2r"} in drawn and any("loss_mim_fwd" in d for d in drawn)  # both kernels ran
    assert losses(tmp_path / "b") == pytest.approx(losses(tmp_path / "a"), rel=1e-4)
    assert_same_params(eager.model, compiled.model, exact=False)
    assert list(eager.model.state_dict()) == list(compiled.model.state_dict())


def test_fp16_trains_with_a_grad_scaler_and_resumes_it(tmp_path, small_shards):
    # CPUs without native fp16 emulate it slowly: few small steps, and no matmul probe
    trainer = Trainer(micro_train_config(small_shards, tmp_path / "h", steps=4, batch_size=2, precision="fp16",
                                         lr=3e-3, plot=False, log_every=1, peak_flops=1e9, eval_tokens=256))
    assert trainer.scaler is not None
    trainer.fit()
    assert losses(tmp_path / "h")[-1] < losses(tmp_path / "h")[0]
    resumed = Trainer(micro_train_config(small_shards, tmp_path / "h", steps=4, precision="fp16", resume=True))
    assert resumed.scaler.get_scale() == trainer.scaler.get_scale()


@pytest.mark.slow
def test_bf16_loss_matches_fp32_within_the_spread_of_seeds(tmp_path, small_shards):
    """bf16 autocast is the default only because this holds: same seed, val loss at step N within the spread of
    3 fp32 seeds (widened by half the spread on each side, since 3 seeds understate it)."""
    def val_loss(precision, seed):
        cfg = micro_train_config(small_shards, tmp_path / f"{precision}{seed}", steps=20, precision=precision,
                                 seed=seed, eval_tokens=2048, plot=False, peak_flops=1e9)
        return Trainer(cfg).fit()["val_l2r"]

    fp32 = [val_loss("fp32", s) for s in (0, 1, 2)]
    bf16 = val_loss("bf16", 0)
    spread = max(fp32) - min(fp32)
    assert min(fp32) - spread / 2 <= bf16 <= max(fp32) + spread / 2, (bf16, fp32)


def test_progress_metrics_and_plots(tmp_path, small_shards):
    from codelm.cli import main

    cfg = micro_train_config(small_shards, tmp_path / "p", steps=4, log_every=2, peak_flops=1e9)
    Trainer(cfg).fit()
    rec = train_records(tmp_path / "p")[-1]
    assert rec["tok_s"] > 0 and 0 < rec["mfu"]
    assert (tmp_path / "p" / "loss.png").stat().st_size > 1000
    assert main(["runs", "plot", str(tmp_path / "p"), str(tmp_path / "p"), "--out", str(tmp_path / "o.png")]) == 0
    assert (tmp_path / "o.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["runs", "plot", str(tmp_path / "nope")]) == 2


def test_init_from_an_imported_hugging_face_directory_needs_shards_in_its_tokenizer(tmp_path, small_shards,
                                                                                 trained_run):
    """An imported model keeps its own (HF) tokenizer, so continued pretraining needs shards tokenized with it;
    codelm shards are refused with one clear line rather than trained on with the wrong ids."""
    pytest.importorskip("tokenizers")
    from codelm.errors import TokenizerMismatch
    from codelm.hf import export_hf

    hf_dir = export_hf(trained_run, tmp_path / "hf")
    cfg = micro_train_config(small_shards, tmp_path / "cpt", steps=2, init_from=str(hf_dir), plot=False)
    cfg.model = {}
    with pytest.raises(TokenizerMismatch, match="shard directory"):
        Trainer(cfg)


def test_mup_hidden_matrices_learn_at_lr_over_width_mult(tmp_path, small_shards):
    """With --model.mup the trainer uses µP's parameter groups and the schedule keeps each group's lr_scale."""
    from codelm.train import Trainer
    model = {"n_layer": 1, "n_head": 2, "d_model": 128, "context_length": 64, "mup": True, "mup_base_width": 64}
    trainer = Trainer(micro_train_config(small_shards, tmp_path / "mup", steps=2, model=model, warmup_steps=1))
    trainer.fit()
    scales = sorted({g["lr_scale"] for g in trainer.optimizer.param_groups})
    assert scales == [0.5, 1.0]
    for g in trainer.optimizer.param_groups:
        assert g["lr"] == pytest.approx(trainer.optimizer.param_groups[-1]["lr"] * g["lr_scale"])

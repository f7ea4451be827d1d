"""The training loop: AdamW, warmup + decay, accumulation, clipping, autocast, validation, checkpoints, exact resume.

The trainer knows nothing of the objectives' internals (minGPT's rule): it asks the mixture for a batch and a loss.
Data order is a pure function of (seed, step, micro-step), so a resumed run sees exactly the batches the
uninterrupted one would have, with no sampler state to save.

Run directory:
    RUN/config.json        the resolved TrainConfig (and model config)
    RUN/metrics.jsonl      one JSON object per logged step / validation / evaluation
    RUN/checkpoints/step_N model + trainer state (codelm/checkpoint.py)
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from codelm.checkpoint import (default_capabilities, list_checkpoints, load_checkpoint, load_train_state,
                               prune_checkpoints, save_checkpoint)
from codelm.config import option, save_config
from codelm.data.shards import ShardSet
from codelm.errors import ConfigError
from codelm.model import ModelConfig, Transformer, count_parameters, flops_per_token, preset_config
from codelm.objectives import build_objectives, parse_mixture

log = logging.getLogger("codelm.train")


@dataclass
class TrainConfig:
    data: str = option("data/stdlib", "shard directory made by `codelm data prepare`")
    out: str = option("runs/tiny", "run directory (config, metrics, checkpoints)")
    preset: str = option("tiny", "model preset: tiny, small, 350m, 1.3b, 2.7b")
    model: dict = option({}, "model config overrides, e.g. --model.n_layer 4", cli=False)
    objective: str = option("l2r", "objective mixture over windows: l2r, fim, mim, or e.g. mim:0.5,fim:0.5")
    fim_rate: float = option(0.5, "FIM: probability that a document in a window is transformed")
    mim_beta: float = option(0.1, "MIM: weight of the agreement (total variation) term")
    mim_stop_grad: bool = option(False, "MIM: stop the agreement term's gradient into the backward direction")
    steps: int = option(1000, "optimizer steps")
    batch_size: int = option(16, "windows per micro-batch")
    grad_accum: int = option(1, "micro-batches per optimizer step")
    context_length: int = option(0, "window length in tokens (0 = the model's context length)")
    lr: float = option(1e-3, "peak learning rate")
    min_lr_ratio: float = option(0.1, "final learning rate as a fraction of the peak")
    warmup_steps: int = option(100, "linear warmup steps")
    schedule: str = option("cosine", "decay after warmup: cosine, linear, constant")
    weight_decay: float = option(0.1, "AdamW weight decay (matrices only)")
    beta1: float = option(0.9, "AdamW beta1")
    beta2: float = option(0.95, "AdamW beta2")
    eps: float = option(1e-8, "AdamW epsilon")
    grad_clip: float = option(1.0, "clip the global gradient norm to this (0 = off)")
    precision: str = option("auto", "fp32, bf16 (autocast) or auto (bf16 where supported)")
    eval_every: int = option(200, "validate every N steps (0 = only at the end)")
    eval_tokens: int = option(32768, "validation tokens per evaluation")
    save_every: int = option(500, "checkpoint every N steps (a final one is always written)")
    keep_last: int = option(3, "checkpoints to keep (0 = all)")
    log_every: int = option(10, "progress line every N steps")
    seed: int = option(1337, "seed for initialisation and data order")
    device: str = option("auto", "cpu, cuda, or auto")
    threads: int = option(0, "torch CPU threads (0 = leave torch's default)")
    resume: bool = option(False, "continue the run in --out from its latest checkpoint")
    init_from: str = option("", "start from this checkpoint's weights (continued pretraining)")


# ----------------------------------------------------------------------------------------------------------------
# Learning-rate schedule
# ----------------------------------------------------------------------------------------------------------------
def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to the peak, then the named decay to min_lr_ratio * peak at the last step."""
    peak, floor = cfg.lr, cfg.lr * cfg.min_lr_ratio
    if step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    if cfg.schedule == "cosine":
        return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))
    if cfg.schedule == "linear":
        return peak + (floor - peak) * progress
    if cfg.schedule == "constant":
        return peak
    raise ConfigError(f"unknown --schedule {cfg.schedule!r}; choose cosine, linear or constant")


# ----------------------------------------------------------------------------------------------------------------
# Data: windows as a pure function of (seed, step, micro-step)
# ----------------------------------------------------------------------------------------------------------------
def sample_windows(tokens: np.ndarray, batch: int, length: int, seed: int, step: int, micro: int,
                   rank: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`batch` random windows of `length` tokens; returns (windows [B, length], their start offsets)."""
    if len(tokens) <= length:
        raise ConfigError(f"the training split has {len(tokens)} tokens, fewer than one window of {length}")
    rng = np.random.default_rng([seed, step, micro, rank])
    starts = rng.integers(0, len(tokens) - length, size=batch)
    return np.stack([np.asarray(tokens[s:s + length]) for s in starts]), starts


def choose_objective(weights: dict[str, float], seed: int, step: int, micro: int) -> str:
    """Mixtures are over windows: each micro-batch draws one objective with the mixture's weights."""
    if len(weights) == 1:
        return next(iter(weights))
    rng = np.random.default_rng([seed, step, micro, 7919])
    names = sorted(weights)
    return names[int(rng.choice(len(names), p=[weights[n] for n in names]))]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32."""
    if name == "fp32":
        return None
    if name == "bf16":
        return torch.bfloat16
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        return torch.bfloat16  # PyTorch's CPU autocast runs bf16 matmuls on AVX512-BF16/AMX, fp32 elsewhere
    raise ConfigError(f"unknown --precision {name!r}; choose fp32, bf16 or auto")


def configure_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """Weight decay on matrices only (not on norms' gains), as GPT-3/Llama do."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=False)


def _format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


# ----------------------------------------------------------------------------------------------------------------
# The trainer
# ----------------------------------------------------------------------------------------------------------------
EvalCallback = Callable[["Trainer", int], dict]


class Trainer:
    def __init__(self, cfg: TrainConfig, callbacks: list[EvalCallback] | None = None):
        from codelm.tokenizer import get_tokenizer

        self.cfg = cfg
        self.callbacks = callbacks or []
        self.run_dir = Path(cfg.out)
        self.device = resolve_device(cfg.device)
        self.autocast_dtype = resolve_precision(cfg.precision, self.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.weights = parse_mixture(cfg.objective)

        init = None
        if cfg.init_from:
            init = load_checkpoint(cfg.init_from)
            self.model_cfg = init.config
            self.tokenizer = init.tokenizer
        else:
            self.model_cfg = self._model_config()
            self.tokenizer = get_tokenizer(self.model_cfg.tokenizer)
        self.shards = ShardSet(cfg.data)
        self.tokenizer.check_same(self.shards.tokenizer_desc, f"shard directory {cfg.data}")
        self.context = cfg.context_length or self.model_cfg.context_length
        if self.context > self.model_cfg.context_length:
            raise ConfigError(f"--context-length {self.context} exceeds the model's {self.model_cfg.context_length}")

        torch.manual_seed(cfg.seed)
        self.model = Transformer(self.model_cfg)
        if init is not None:
            self.model.load_state_dict(init.model.state_dict())
        self.model.to(self.device)
        self.objectives = build_objectives(cfg.objective, self.tokenizer, fim_rate=cfg.fim_rate,
                                           mim_beta=cfg.mim_beta, mim_stop_grad=cfg.mim_stop_grad)
        self.optimizer = configure_optimizer(self.model, cfg)
        self.step = 0
        self.tokens_seen = 0
        self.train_seconds = 0.0
        self.train_split = self.shards.split("train")
        self.val_split = self.shards.split("val")
        self.flops_per_token = flops_per_token(self.model_cfg, self.context)["train"]
        if cfg.resume:
            self._resume()

    def _model_config(self) -> ModelConfig:
        from codelm.config import coerce
        import dataclasses

        types = {f.name: f.type for f in dataclasses.fields(ModelConfig)}
        overrides = {}
        for key, value in self.cfg.model.items():
            if key not in types:
                raise ConfigError(f"unknown model option --model.{key}; known: {', '.join(types)}")
            tp = {"int": int, "float": float, "bool": bool, "str": str}.get(str(types[key]), types[key])
            overrides[key] = coerce(value, tp, f"model.{key}")
        return preset_config(self.cfg.preset, **overrides)

    # --- capabilities and saving ---------------------------------------------------------------------------------
    def capabilities(self) -> dict:
        caps = default_capabilities(self.tokenizer, self.model_cfg.context_length, self.weights)
        caps.update({"trained_context": self.context, "data_manifest_hash": self.shards.manifest_hash,
                     "data_decontaminated": bool(self.shards.index.get("manifest", {}).get("decontaminated", False)),
                     "seed": self.cfg.seed, "fim_rate": self.cfg.fim_rate if "fim" in self.weights else None,
                     "mim_beta": self.cfg.mim_beta if "mim" in self.weights else None})
        return caps

    def train_state(self) -> dict:
        return {"step": self.step, "tokens_seen": self.tokens_seen, "train_seconds": self.train_seconds,
                "optimizer": self.optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
                "numpy_rng": np.random.get_state(), "config": asdict(self.cfg)}

    def save(self) -> Path:
        path = save_checkpoint(self.run_dir / "checkpoints" / f"step_{self.step:07d}", self.model, self.tokenizer,
                               capabilities=self.capabilities(), train_state=self.train_state(),
                               meta={"step": self.step, "tokens_seen": self.tokens_seen})
        prune_checkpoints(self.run_dir, self.cfg.keep_last)
        return path

    def _resume(self):
        ckpts = list_checkpoints(self.run_dir)
        if not ckpts:
            log.warning("--resume: no checkpoint in %s, starting fresh", self.run_dir)
            return
        ckpt = load_checkpoint(ckpts[-1])
        ckpt.tokenizer.check_same(self.tokenizer, f"checkpoint {ckpts[-1]}")
        self.model.load_state_dict(ckpt.model.state_dict())
        state = load_train_state(ckpts[-1])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        np.random.set_state(state["numpy_rng"])
        self.step, self.tokens_seen = state["step"], state["tokens_seen"]
        self.train_seconds = state.get("train_seconds", 0.0)
        log.info("resumed from %s at step %d", ckpts[-1], self.step)

    # --- metrics ---------------------------------------------------------------------------------------------------
    def log_metrics(self, record: dict) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def autocast(self):
        if self.autocast_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    # --- one step --------------------------------------------------------------------------------------------------
    def train_step(self) -> dict:
        cfg = self.cfg
        self.model.train()
        lr = lr_at(self.step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        totals: dict[str, float] = {}
        for micro in range(cfg.grad_accum):
            name = choose_objective(self.weights, cfg.seed, self.step, micro)
            windows, _ = sample_windows(self.train_split.tokens, cfg.batch_size, self.context, cfg.seed,
                                        self.step, micro)
            rng = np.random.default_rng([cfg.seed, self.step, micro, 104729])
            batch = self.objectives[name].make_batch(windows, rng).to(self.device)
            with self.autocast():
                loss, metrics = self.objectives[name].loss(self.model, batch)
            (loss / cfg.grad_accum).backward()
            totals["loss"] = totals.get("loss", 0.0) + float(loss.detach()) / cfg.grad_accum
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0.0) + float(v) / cfg.grad_accum
            self.tokens_seen += windows.size
        if cfg.grad_clip > 0:
            totals["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        totals["lr"] = lr
        return totals

    # --- validation ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict:
        """Every objective's loss on the same fixed validation windows, in nats/token and bits/byte."""
        self.model.eval()
        T = self.context
        tokens = self.val_split.tokens
        n_windows = max(1, min(self.cfg.eval_tokens // T, (len(tokens) - 1) // T))
        if len(tokens) <= T:
            raise ConfigError(f"the validation split has {len(tokens)} tokens, fewer than one window of {T}")
        starts = np.linspace(0, len(tokens) - T - 1, n_windows).astype(np.int64)
        sums: dict[str, list[float]] = {}
        rng = np.random.default_rng([self.cfg.seed, 424242])  # fixed FIM splits etc. at every validation
        for i in range(0, n_windows, self.cfg.batch_size):
            windows = np.stack([np.asarray(tokens[s:s + T]) for s in starts[i:i + self.cfg.batch_size]])
            for name, objective in self.objectives.items():
                batch = objective.make_batch(windows, rng).to(self.device)
                with self.autocast():
                    for stream, (nats, count) in objective.val_metrics(self.model, batch).items():
                        acc = sums.setdefault(stream, [0.0, 0])
                        acc[0] += nats
                        acc[1] += count
        bytes_per_token = self.val_split.bytes_per_token
        out = {}
        for stream, (nats, count) in sums.items():
            loss = nats / max(1, count)
            out[f"val_{stream}"] = loss
            out[f"val_{stream}_bpb"] = loss / (math.log(2) * bytes_per_token)
        return out

    # --- the loop --------------------------------------------------------------------------------------------------
    def fit(self, stop_at: int | None = None) -> dict:
        """Train to cfg.steps (or stop early at `stop_at`, checkpointed, as an interrupted run would be)."""
        cfg = self.cfg
        last_step = min(cfg.steps, stop_at) if stop_at is not None else cfg.steps
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config({"train": asdict(cfg), "model": self.model_cfg.to_dict(), "tokenizer": self.tokenizer.describe(),
                     "data_manifest_hash": self.shards.manifest_hash}, self.run_dir / "config.json")
        n_params = count_parameters(self.model)
        log.info("model: %.2fM parameters, %.1f MFLOPs/token (train), context %d, objective %s, device %s, %s",
                 n_params / 1e6, self.flops_per_token / 1e6, self.context, cfg.objective, self.device,
                 "bf16 autocast" if self.autocast_dtype == torch.bfloat16 else "fp32")
        last_val: dict = {}
        window_t0, window_tokens = time.perf_counter(), 0
        while self.step < last_step:
            t0 = time.perf_counter()
            tokens_before = self.tokens_seen
            metrics = self.train_step()
            dt = time.perf_counter() - t0
            self.train_seconds += dt
            window_tokens += self.tokens_seen - tokens_before
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                elapsed = time.perf_counter() - window_t0
                tok_s = window_tokens / max(elapsed, 1e-9)
                eta = (cfg.steps - self.step) * (elapsed / max(1, cfg.log_every if self.step % cfg.log_every == 0
                                                               else self.step % cfg.log_every))
                record = {"step": self.step, "tokens": self.tokens_seen, "tok_s": round(tok_s, 1), **metrics}
                self.log_metrics({"kind": "train", **record})
                log.info("step %d/%d | loss %.4f | lr %.2e | %s tok/s | ETA %s", self.step, cfg.steps,
                         metrics["loss"], metrics["lr"], f"{tok_s:,.0f}", _format_duration(eta))
                window_t0, window_tokens = time.perf_counter(), 0
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.steps:
                last_val = self._evaluate()
                window_t0, window_tokens = time.perf_counter(), 0  # keep validation time out of tokens/s
            if cfg.save_every and self.step % cfg.save_every == 0 and self.step < cfg.steps:
                self.save()
                window_t0, window_tokens = time.perf_counter(), 0
        last_val = self._evaluate()
        path = self.save()
        summary = {"step": self.step, "tokens": self.tokens_seen, "checkpoint": str(path), **last_val}
        log.info("done: %s", ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                         for k, v in summary.items()))
        return summary

    def _evaluate(self) -> dict:
        t0 = time.perf_counter()
        val = self.validate()
        for callback in self.callbacks:
            val.update(callback(self, self.step))
        self.log_metrics({"kind": "val", "step": self.step, "tokens": self.tokens_seen, **val})
        log.info("val @ %d: %s (%.1fs)", self.step, ", ".join(f"{k} {v:.4f}" for k, v in val.items()
                                                              if isinstance(v, float)), time.perf_counter() - t0)
        return val

"""The training loop: AdamW, schedules, accumulation, clipping, mixed precision, data parallelism, exact resume.

The trainer knows nothing of the objectives' internals (minGPT's rule): it asks the mixture for a batch and a loss.
Data order is a pure function of (seed, step): each step's global batch of windows is drawn at once and sliced per
micro-step and per rank, so a resumed run sees exactly the batches the uninterrupted one would have (no sampler
state to save), and 1 process x 4 accumulation steps, 2 processes x 2, and 1 process with a 4x batch all take the
same optimizer step. Learning rate, context length and data blend are functions of the step too (codelm/schedules.py).

The same command runs on one process, `torchrun` DDP (gloo on CPU, NCCL on GPU) or FSDP2 (codelm/distributed.py).
Only rank 0 writes logs, metrics and checkpoints; checkpoints hold full tensors and load in a single process.

Run directory:
    RUN/config.json        the resolved TrainConfig (and model config)
    RUN/metrics.jsonl      one JSON object per logged step / validation / evaluation
    RUN/loss.png           loss curves, written at the end (codelm/runs.py)
    RUN/checkpoints/step_N model + trainer state (codelm/checkpoint.py)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import time
import typing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from codelm import distributed
from codelm.checkpoint import (default_capabilities, list_checkpoints, load_train_state, prune_checkpoints,
                               save_checkpoint)
from codelm.loader import load_checkpoint
from codelm.atomic import atomic_write_text
from codelm.config import option, save_config
from codelm.data.shards import ShardSet
from codelm.errors import ConfigError
from codelm.fast_paths import apply_fast_paths, cpu_has_bf16, keep_freed_memory_mapped
from codelm.model import (ModelConfig, Transformer, count_parameters, flops_per_token, optimizer_groups,
                          preset_config)
from codelm.objectives import LeftToRight, build_objectives, parse_mixture
from codelm.schedules import (RECIPES, context_at, fit_batch, lr_multiplier, parse_context_schedule,
                              parse_schedule, switch_step)
from codelm.packing import ATTENTION_MASKS
from codelm.terms import ATTENTION_MASK_KEY, CAUSAL, FIM, FIM_FORMATS_KEY, MIM, can

log = logging.getLogger("codelm.train")


@dataclass
class TrainConfig:
    data: str = option("data/stdlib", "shard directory made by `codelm data prepare`")
    out: str = option("runs/tiny", "run directory (config, metrics, checkpoints)")
    recipe: str = option("", "named recipe setting the paper's values (explicit flags win): "
                             "mim-350m, mim-1.3b, mim-2.7b, continued")
    preset: str = option("tiny", "model preset: tiny, small, 350m, 1.3b, 2.7b")
    model: dict = option({}, "model config overrides, e.g. --model.n_layer 4", cli=False)
    objective: str = option("l2r", "objective mixture over windows: l2r, fim, mim, sft, or e.g. mim:0.5,fim:0.5")
    fim_rate: float = option(0.5, "FIM: probability that a document in a window is transformed")
    fim_split: str = option("char", "FIM: cut points at uniform characters (char, the FIM paper) or at line starts "
                                    "(line: whole-line middles, learned much faster by small models)")
    mim_beta: float = option(0.1, "MIM: weight of the agreement (total variation) term")
    mim_stop_grad: bool = option(False, "MIM: stop the agreement term's gradient into the backward direction")
    sft_data: str = option("", "objective sft: JSONL of prompt/completion pairs (loss on the completion only)")
    attention_mask: str = option(CAUSAL, "causal: attention across the whole packed window; document: no token "
                                         "attends across an end-of-text, positions restart per document, each "
                                         "document opens with its own direction marker (codelm/packing.py)",
                                 choices=ATTENTION_MASKS)
    steps: int = option(1000, "optimizer steps")
    batch_size: int = option(16, "windows per micro-batch (per process)")
    grad_accum: int = option(1, "micro-batches per optimizer step")
    global_batch: int = option(0, "windows per optimizer step over all processes (0 = batch_size x grad_accum x "
                                  "processes); sets grad_accum")
    context_length: int = option(0, "window length in tokens (0 = the model's context length)")
    context_schedule: str = option("", "context length by fraction of steps, e.g. 0.75:2048,1.0:8192 (BTLM); "
                                       "tokens per micro-batch stay constant")
    data_switch: str = option("", "second shard directory (higher-quality blend) to switch to part-way")
    switch_at_lr_fraction: float = option(0.2, "switch to --data-switch when the LR falls to this fraction of its "
                                               "peak (Parmar et al. 2024)")
    lr: float = option(1e-3, "peak learning rate")
    min_lr_ratio: float = option(0.1, "final learning rate as a fraction of the peak")
    warmup_steps: int = option(100, "linear warmup steps (with --init-from: re-warming)")
    schedule: str = option("cosine", "decay after warmup: cosine, linear, polynomial[:power], inv-sqrt, "
                                     "wsd[:decay_fraction], constant")
    weight_decay: float = option(0.1, "AdamW weight decay (matrices only)")
    beta1: float = option(0.9, "AdamW beta1")
    beta2: float = option(0.95, "AdamW beta2")
    eps: float = option(1e-8, "AdamW epsilon")
    grad_clip: float = option(1.0, "clip the global gradient norm to this (0 = off)")
    precision: str = option("auto", "fp32, bf16 (autocast), fp16 (autocast + grad scaler) or auto (bf16 where "
                                    "the hardware has it)")
    activation_checkpointing: bool = option(False, "recompute each block's activations in the backward pass "
                                                   "(less memory, ~1/3 more compute)")
    compile: bool | None = option(None, "torch.compile each block: 1.1-1.4x faster steps after ~10-30 s of "
                                        "compiling; unset = auto: on when the run's estimated eager time repays it "
                                        "(see compile_repays)")
    parallel: str = option("auto", "with torchrun: ddp, fsdp, or auto (fsdp for 350m and larger)")
    optimizer_impl: str = option("auto", "AdamW kernel: fused, foreach, for-loop, or auto (fused)")
    keep_freed_memory: bool = option(True, "CPU: malloc keeps freed memory for the next step instead of returning "
                                           "it to the OS (glibc; resident memory stays at its peak)")
    peak_flops: float = option(0.0, "peak FLOP/s per process for MFU (0 = known GPU peak or a matmul probe)")
    eval_every: int = option(200, "validate every N steps (0 = only at the end)")
    eval_tokens: int = option(32768, "validation tokens per evaluation")
    save_every: int = option(500, "checkpoint every N steps (a final one is always written)")
    keep_last: int = option(3, "checkpoints to keep (0 = all)")
    log_every: int = option(10, "progress line every N steps")
    plot: bool = option(True, "write loss-curve PNGs to the run directory at the end")
    seed: int = option(1337, "seed for initialisation and data order")
    device: str = option("auto", "cpu, cuda, or auto")
    threads: int = option(0, "torch CPU threads (0 = leave torch's default)")
    resume: bool = option(False, "continue the run in --out from its latest checkpoint")
    init_from: str = option("", "start from this checkpoint's weights (continued pretraining)")


# ----------------------------------------------------------------------------------------------------------------
# Recipes and schedules
# ----------------------------------------------------------------------------------------------------------------
def apply_recipe(cfg: TrainConfig, explicit: set[str] | None = None, pretraining: dict | None = None) -> TrainConfig:
    """The recipe's values for every field the user did not set. `explicit` names the fields the user gave (the
    CLI knows); without it a field still at its dataclass default counts as not given. `pretraining` is the
    --init-from checkpoint's recorded schedule ({"lr_peak", "lr_final"}), used by the continued recipe."""
    if not cfg.recipe:
        return cfg
    if cfg.recipe not in RECIPES:
        raise ConfigError(f"unknown --recipe {cfg.recipe!r}; choose {', '.join(RECIPES)}")
    defaults = TrainConfig()
    given = explicit if explicit is not None else {
        f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != getattr(defaults, f.name)}
    values = dict(RECIPES[cfg.recipe])
    if cfg.recipe == "continued" and pretraining and pretraining.get("lr_final"):
        # start where pretraining ended (no warmup), decay to 1/100 of the pretraining peak
        values["lr"] = pretraining["lr_final"]
        values["min_lr_ratio"] = min(1.0, pretraining["lr_peak"] / 100 / pretraining["lr_final"])
    return dataclasses.replace(cfg, **{k: v for k, v in values.items() if k not in given})


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to the peak, then the named decay to min_lr_ratio * peak at the last step."""
    return cfg.lr * lr_multiplier(step, cfg.steps, cfg.warmup_steps, cfg.schedule, cfg.min_lr_ratio)


# ----------------------------------------------------------------------------------------------------------------
# Data: windows as a pure function of (seed, step)
# ----------------------------------------------------------------------------------------------------------------
def sample_windows(tokens: np.ndarray, batch: int, length: int, seed: int, step: int, micro: int = 0,
                   rank: int = 0, world: int = 1, grad_accum: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """This rank's `batch` windows of `length` tokens for one micro-step; returns (windows [B, length], starts).

    The step's global batch (batch x grad_accum x world windows) is drawn from (seed, step) alone and sliced, so
    how it is split over micro-steps and processes does not change which windows the step trains on."""
    if len(tokens) <= length:
        raise ConfigError(f"the training split has {len(tokens)} tokens, fewer than one window of {length}")
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, len(tokens) - length, size=batch * grad_accum * world)
    first = (micro * world + rank) * batch
    starts = starts[first:first + batch]
    return np.stack([np.asarray(tokens[s:s + length]) for s in starts]), starts


def choose_objective(weights: dict[str, float], seed: int, step: int, micro: int) -> str:
    """Mixtures are over windows: each micro-batch draws one objective with the mixture's weights."""
    if len(weights) == 1:
        return next(iter(weights))
    rng = np.random.default_rng([seed, step, micro, 7919])
    names = sorted(weights)
    return names[int(rng.choice(len(names), p=[weights[n] for n in names]))]


# ----------------------------------------------------------------------------------------------------------------
# Device, precision, optimizer, speed accounting
# ----------------------------------------------------------------------------------------------------------------
def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def pin_cpu_numerics() -> None:
    """Same command, same numbers, whatever else the machine runs. Intel's conditions for run-to-run identical MKL
    results: a fixed thread count (torch's is fixed at start), no dynamic adjustment of it (MKL_DYNAMIC and
    OMP_DYNAMIC false: MKL otherwise may run a call on fewer threads than asked, which changes summation order) and
    conditional numerical reproducibility (MKL_CBWR=AUTO: the processor's best code path, but no branch that depends
    on the memory alignment of the operands, which differs from run to run). A kill-and-resume trial on a busy Intel
    machine diverged at step 1 without them. A user's own settings win. MKL reads them at its first call: a
    `codelm train` process sets them before its first matmul; a program that multiplied before building a Trainer
    sets them itself."""
    for var, value in (("MKL_DYNAMIC", "FALSE"), ("OMP_DYNAMIC", "FALSE"), ("MKL_CBWR", "AUTO")):
        os.environ.setdefault(var, value)


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32. `auto` is bf16 where the hardware has it: on this project's
    CPUs its loss curve matched fp32 within the spread of fp32 seeds (benchmarks/bench_train.py --check-bf16)."""
    if name == "fp32":
        return None
    if name == "bf16":
        return torch.bfloat16
    if name == "fp16":
        return torch.float16
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        return torch.bfloat16 if cpu_has_bf16() else None
    raise ConfigError(f"unknown --precision {name!r}; choose fp32, bf16, fp16 or auto")


def configure_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """Weight decay on matrices only (not on norms' gains), as GPT-3/Llama do. The fused kernel updates all
    parameters in one pass per group: cheapest on CPU and GPU (benchmarks/bench_train.py)."""
    inner = getattr(model, "module", model)  # under DDP the Transformer is model.module
    groups = optimizer_groups(inner, cfg.lr, cfg.weight_decay)
    params = [p for g in groups for p in g["params"]]
    impl = {"auto": "fused", "fused": "fused", "foreach": "foreach", "for-loop": "for-loop"}.get(cfg.optimizer_impl)
    if impl is None:
        raise ConfigError(f"unknown --optimizer-impl {cfg.optimizer_impl!r}; choose fused, foreach, for-loop, auto")
    if impl == "fused" and any(type(p).__name__ == "DTensor" for p in params):
        impl = "foreach"  # FSDP2's sharded parameters: the fused kernel does not take DTensors on every backend
    kind = {"fused": dict(fused=True), "foreach": dict(foreach=True), "for-loop": dict(foreach=False)}[impl]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, **kind)


def enable_activation_checkpointing(model: Transformer) -> None:
    """Recompute each block in the backward pass. The block's forward is wrapped per instance, so parameter names
    (and checkpoints) stay exactly those of the plain model."""
    from torch.utils.checkpoint import checkpoint

    for block in model.layers:
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)


def clip_gradients(model: torch.nn.Module, optimizer: torch.optim.Optimizer, max_norm: float,
                   folded: bool = True) -> torch.Tensor:
    """Clip the global gradient norm to `max_norm` (clip_grad_norm_'s coefficient, max_norm / (norm + 1e-6), when
    below 1); returns the norm before clipping. With the fused AdamW the coefficient is folded into the update: the
    kernel divides each gradient by the optimizer's `grad_scale` as it reads it (the hook fp16 loss scaling uses,
    so not `folded` when a GradScaler holds it), which saves a pass over every gradient; the update equals clipping
    first up to rounding, and a norm under `max_norm` divides by exactly 1. The caller drops `grad_scale` after
    the step."""
    params = [p for p in model.parameters() if p.grad is not None]
    # the groups' flag, not the defaults: a resumed optimizer takes its groups from the checkpoint (FSDP's: foreach)
    if not (folded and all(group.get("fused") for group in optimizer.param_groups)):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    optimizer.grad_scale = torch.clamp((norm.float() + 1e-6) / max_norm, min=1.0)
    return norm


def compile_blocks(model: Transformer) -> None:
    """torch.compile each block's training pass (regional compilation, as torchtitan does): the blocks share their code,
    so one graph is compiled and reused by all of them (seconds, where the whole model takes minutes). It fuses the
    elementwise work between the matmuls (norms, rotary, SwiGLU, casts), most of what eager mode spends outside them.
    Validation and generation (KV cache, ever-changing shapes) stay eager; parameter names stay the plain model's."""
    for block in model.layers:
        block.forward = functools.partial(_compiled_when_training, block, block.forward, torch.compile(block.forward))


# Compiling the blocks costs ~10-30 s on 2 CPU cores and makes each step ~1.15-1.4x faster (benchmarks/bench_train.py
# --ablate): it repays itself after ~2 minutes of eager steps. Auto compiles runs estimated to take longer than that.
COMPILE_REPAYS_AFTER_S = 120.0
ASSUMED_MFU = 0.3  # for the estimate only: what an eager step reaches of the measured matmul peak


def compile_repays(steps_left: int, tokens_per_step: int, flops_per_token: float, peak_flops: float) -> bool:
    """`--compile` unset: compile when the remaining steps, run eagerly, would take longer than compiling repays.
    The estimate uses the matmul peak measured at the start of fit(): the demo (300 tiny-preset steps of 16 x 256
    tokens) qualifies, a 20-step test of a micro model does not."""
    eager_s = steps_left * tokens_per_step * flops_per_token / max(peak_flops * ASSUMED_MFU, 1.0)
    return eager_s >= COMPILE_REPAYS_AFTER_S


def compile_losses(objectives: dict) -> None:
    """Each objective's fused loss through its compiled chunk kernels (codelm/objectives.py: _exp_kernel and
    _nll_grad_kernel or _mim_grad_kernel): the loss's dozen passes over the logits become a few."""
    for objective in objectives.values():
        objective.compiled_loss = True


def _compiled_when_training(block, eager, compiled, *args):
    return (compiled if block.training and torch.is_grad_enabled() else eager)(*args)


# Dense bf16 peaks of common GPUs (vendor datasheets, without sparsity); anything else is probed.
GPU_PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


def measure_peak_flops(device: torch.device, dtype: torch.dtype | None, size: int = 1024, reps: int = 4) -> float:
    """FLOP/s of a dense square matmul in the dtype the model's matmuls run in: the roof MFU is measured against,
    the best of the kernels that dtype can run on (`matmul_peaks`), so a faster kernel the model does not use
    still counts against it. On a shared CPU the best of a few runs is the closest to the machine's own peak."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peak in GPU_PEAK_FLOPS.items():
            if key in name:
                return peak if dtype in (torch.bfloat16, torch.float16) else peak / 2  # TF32 rate for fp32
    dt = dtype or torch.float32
    return max(flops for (kernel_dtype, _), flops in matmul_peaks(device, size, reps, [dt]).items()
               if kernel_dtype == dt)


def matmul_peaks(device: torch.device, size: int = 1024, reps: int = 4,
                 dtypes=(torch.float32, torch.bfloat16)) -> dict[tuple[torch.dtype, str], float]:
    """{(dtype, kernel): FLOP/s} of a size^3 matmul: `a @ b` (fp32: the BLAS torch links, MKL or OpenBLAS; bf16:
    oneDNN) and, for fp32 on CPU, oneDNN's linear on a packed weight (the kernel codelm/fast_paths.py uses)."""
    def best_of(fn) -> float:
        best = float("inf")
        for i in range(reps + 2):
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= 2:  # the first runs warm caches and pick kernels
                best = min(best, time.perf_counter() - t0)
        return 2 * size ** 3 / best

    out = {}
    for dt in dtypes:
        a = torch.randn(size, size, device=device).to(dt)
        b = torch.randn(size, size, device=device).to(dt)
        out[(dt, "matmul" if device.type != "cpu" or dt != torch.float32 else "BLAS")] = best_of(lambda: a @ b)
        if device.type == "cpu" and dt == torch.float32 and torch.backends.mkldnn.is_available():
            try:
                packed = torch.ops.mkldnn._reorder_linear_weight(b.t().contiguous(), size)
                linear = torch.ops.mkldnn._linear_pointwise
                out[(dt, "oneDNN")] = best_of(lambda: linear(a, packed, None, "none", [], ""))
            except (AttributeError, RuntimeError, NotImplementedError):  # a build without these kernels
                pass
    return out


def resident_memory() -> tuple[float, float]:
    """(current, peak) resident memory of this process in bytes: /proc/self/statm and getrusage (Linux; the peak
    alone elsewhere, 0.0 where neither exists)."""
    try:
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0  # KiB on Linux
    except ImportError:
        peak = 0.0
    try:
        with open("/proc/self/statm") as f:
            current = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        current = peak
    return float(current), max(peak, float(current))


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
    """Trainer(cfg, callbacks=[fn(trainer, step) -> dict]).fit(). Callbacks run at every validation, on rank 0
    (on every rank under FSDP, where a forward pass is collective: check `trainer.dist.is_main` before writing)."""

    def __init__(self, cfg: TrainConfig, callbacks: list[EvalCallback] | None = None,
                 explicit: set[str] | None = None):
        from codelm.tokenizer import get_tokenizer

        pin_cpu_numerics()  # before this process's first matmul
        self.callbacks = callbacks or []
        self.dist = distributed.init_distributed(resolve_device(cfg.device).type)
        self.device = resolve_device(cfg.device, self.dist.local_rank)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if self.device.type == "cpu" and cfg.keep_freed_memory:
            keep_freed_memory_mapped()

        init = load_checkpoint(cfg.init_from) if cfg.init_from else None
        lr_given = "lr" in explicit if explicit is not None else cfg.lr != TrainConfig.lr
        if init is not None and cfg.recipe == "continued" and not _pretraining_schedule(init) and not lr_given:
            raise ConfigError(f"--recipe continued: {cfg.init_from} records no final learning rate (an imported "
                              f"model); give the peak with --lr")
        cfg = apply_recipe(cfg, explicit, _pretraining_schedule(init) if init else None)
        if cfg.global_batch:
            cfg.batch_size, cfg.grad_accum = fit_batch(cfg.global_batch, cfg.batch_size, self.dist.world)
        parse_schedule(cfg.schedule)  # fail now, not at the first step
        self.cfg = cfg
        self.run_dir = Path(cfg.out)
        self.autocast_dtype = resolve_precision(cfg.precision, self.device)
        self.weights = parse_mixture(cfg.objective)

        self.inherited_capabilities = {}
        if init is not None:
            self.model_cfg = self._init_model_config(init.config)
            self.tokenizer = init.tokenizer
            # fine-tuning (e.g. sft) keeps what the base model could already do: its infill modes stay usable
            self.inherited_capabilities = {k: v for k, v in (init.capabilities or {}).items()
                                           if k in (can(FIM), can(MIM), FIM_FORMATS_KEY, "imported_from",
                                                    "added_tokens", "reused_tokens", "new_rows_init") and v}
            self.inherited_capabilities["base_objectives"] = (init.capabilities or {}).get("objectives")
        else:
            self.model_cfg = self._model_config()
            self.tokenizer = get_tokenizer(self.model_cfg.tokenizer)
        self.shards = ShardSet(cfg.data)
        self.tokenizer.check_same(self.shards.tokenizer_desc, f"shard directory {cfg.data}"
                                  + (f" (model {cfg.init_from})" if cfg.init_from else ""))
        _check_objective_tokens(self.weights, self.tokenizer, cfg.init_from)
        self._setup_context_schedule()
        self._setup_data_switch()

        torch.manual_seed(cfg.seed)
        self.model = apply_fast_paths(Transformer(self.model_cfg))
        if init is not None:
            self.model.load_state_dict(init.model.state_dict())
            del init
        self.model.to(self.device)
        if cfg.activation_checkpointing:
            enable_activation_checkpointing(self.model)
        self.compiled = bool(cfg.compile)  # None (auto) is decided in fit(), once the matmul peak is measured
        if self.compiled:
            compile_blocks(self.model)
        self.dist.mode = distributed.choose_mode(cfg.parallel, self.dist.world, cfg.preset)
        self.wrapped = distributed.wrap_model(self.model, self.dist.mode, self.device)
        self.objectives = build_objectives(cfg.objective, self.tokenizer, fim_rate=cfg.fim_rate,
                                           fim_split=cfg.fim_split, mim_beta=cfg.mim_beta,
                                           mim_stop_grad=cfg.mim_stop_grad, sft_data=cfg.sft_data,
                                           attention_mask=cfg.attention_mask)
        if self.compiled:
            compile_losses(self.objectives)
        self.optimizer = configure_optimizer(self.model, cfg)
        # fp16 needs loss scaling (its 5-bit exponent underflows small gradients); bf16 has fp32's range
        self.scaler = torch.amp.GradScaler(self.device.type) if self.autocast_dtype == torch.float16 else None
        self.step = 0
        self.tokens_seen = 0
        self.model_tokens = 0  # tokens the model read (a MIM window twice), for MFU; not part of the saved state
        self.train_seconds = 0.0
        self.train_split = self.shards.split("train")
        self.val_split = self.shards.split("val")
        self.peak_flops = 0.0  # measured at the start of fit()
        self._tb = None
        if cfg.resume:
            self._resume()

    # --- configuration -----------------------------------------------------------------------------------------
    def _model_config(self) -> ModelConfig:
        from codelm.config import coerce

        types = typing.get_type_hints(ModelConfig)  # the field annotations are strings (postponed evaluation)
        overrides = {}
        for key, value in self.cfg.model.items():
            if key not in types:
                raise ConfigError(f"unknown model option --model.{key}; known: {', '.join(types)}")
            overrides[key] = coerce(value, types[key], f"model.{key}")
        return preset_config(self.cfg.preset, **overrides)

    def _init_model_config(self, base: ModelConfig) -> ModelConfig:
        """The --init-from model's config; only its context length may grow (the rotary table is not a weight,
        so a model pretrained at 2,048 can continue at 8,192, as BTLM-3B-8K did)."""
        unknown = set(self.cfg.model) - {"context_length"}
        if unknown:
            raise ConfigError(f"--init-from fixes the architecture; only --model.context_length may change "
                              f"(got --model.{sorted(unknown)[0]})")
        if "context_length" in self.cfg.model:
            return dataclasses.replace(base, context_length=int(self.cfg.model["context_length"]))
        return base

    def _setup_context_schedule(self) -> None:
        cfg = self.cfg
        self.context = cfg.context_length or self.model_cfg.context_length
        self.context_schedule = parse_context_schedule(cfg.context_schedule) if cfg.context_schedule \
            else [(1.0, self.context)]
        longest = max(c for _, c in self.context_schedule)
        if longest > self.model_cfg.context_length:
            raise ConfigError(f"context {longest} exceeds the model's context_length {self.model_cfg.context_length}"
                              f"; raise it with --model.context_length {longest}")
        if cfg.context_schedule:
            self.context = self.context_schedule[-1][1]  # validation at the final (longest) context

    def _setup_data_switch(self) -> None:
        cfg = self.cfg
        self.switch_shards, self.switch_at = None, cfg.steps
        if not cfg.data_switch:
            return
        self.switch_shards = ShardSet(cfg.data_switch)
        self.tokenizer.check_same(self.switch_shards.tokenizer_desc, f"shard directory {cfg.data_switch}")
        self.switch_at = switch_step(cfg.steps, cfg.warmup_steps, cfg.schedule, cfg.min_lr_ratio,
                                     cfg.switch_at_lr_fraction)
        log.info("data blend switches from %s to %s at step %d", cfg.data, cfg.data_switch, self.switch_at)

    def context_at(self, step: int) -> int:
        return context_at(step, self.cfg.steps, self.context_schedule)

    def batch_at(self, context: int) -> int:
        """Windows per micro-batch: longer windows, fewer of them (BTLM keeps tokens per batch constant)."""
        return max(1, self.cfg.batch_size * self.context_schedule[0][1] // context)

    def split_at(self, step: int):
        if self.switch_shards is not None and step >= self.switch_at:
            return self.switch_shards.split("train")
        return self.train_split

    # --- capabilities and saving ---------------------------------------------------------------------------------
    def capabilities(self) -> dict:
        caps = default_capabilities(self.tokenizer, self.model_cfg.context_length, self.weights)
        caps.update({"trained_context": self.context, "data_manifest_hash": self.shards.manifest_hash,
                     "data_decontaminated": bool(self.shards.index.get("manifest", {}).get("decontaminated", False)),
                     "seed": self.cfg.seed, "fim_rate": self.cfg.fim_rate if FIM in self.weights else None,
                     "fim_split": self.cfg.fim_split if FIM in self.weights else None,
                     "mim_beta": self.cfg.mim_beta if MIM in self.weights else None,
                     ATTENTION_MASK_KEY: self.cfg.attention_mask})
        if self.switch_shards is not None:
            caps["data_switch_manifest_hash"] = self.switch_shards.manifest_hash
        for key, value in self.inherited_capabilities.items():
            if key == FIM_FORMATS_KEY:
                caps[key] = sorted(set(caps.get(key) or []) | set(value))
            elif key in (can(FIM), can(MIM)):
                caps[key] = caps.get(key) or value
            else:
                caps[key] = value
        return caps

    def train_state(self) -> dict:
        """Optimizer state keyed by parameter name and unsharded, so any world size can resume it."""
        state = {"step": self.step, "tokens_seen": self.tokens_seen, "train_seconds": self.train_seconds,
                 "optimizer": distributed.full_optimizer_state(self.model, self.optimizer),
                 "torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state(), "config": asdict(self.cfg),
                 "world": self.dist.world}
        if self.scaler is not None:
            state["grad_scaler"] = self.scaler.state_dict()
        return state

    def save(self) -> Path:
        """Collective under FSDP (every rank gathers); rank 0 writes atomically, so a kill at any moment leaves the
        previous checkpoint whole."""
        model = self.model
        if self.dist.mode == "fsdp":
            model = self._plain_model(distributed.full_model_state(self.model))
        state = self.train_state()
        path = self.run_dir / "checkpoints" / f"step_{self.step:07d}"
        if self.dist.is_main:
            meta = {"step": self.step, "tokens_seen": self.tokens_seen, "lr_peak": self.cfg.lr,
                    "lr_final": self.cfg.lr * self.cfg.min_lr_ratio}
            path = save_checkpoint(path, model, self.tokenizer, capabilities=self.capabilities(), train_state=state,
                                   meta=meta)
            prune_checkpoints(self.run_dir, self.cfg.keep_last)
        distributed.barrier(self.dist.world)
        return path

    def _plain_model(self, state: dict) -> Transformer:
        with torch.device("meta"):
            plain = Transformer(self.model_cfg)
        plain.load_state_dict(state, assign=True, strict=False)
        plain.tie_weights()  # assign replaced embed.weight alone
        return plain

    def _resume(self):
        ckpts = list_checkpoints(self.run_dir)
        if not ckpts:
            log.warning("--resume: no checkpoint in %s, starting fresh", self.run_dir)
            return
        ckpt = load_checkpoint(ckpts[-1])
        ckpt.tokenizer.check_same(self.tokenizer, f"checkpoint {ckpts[-1]}")
        state = load_train_state(ckpts[-1])
        opt_state = state["optimizer"]
        if all(isinstance(k, int) for k in opt_state.get("state", {})):  # older checkpoints: positional keys
            self.model.load_state_dict(ckpt.model.state_dict())
            self.optimizer.load_state_dict(opt_state)
        else:
            distributed.load_full_state(self.model, self.optimizer, ckpt.model.state_dict(), opt_state)
        if self.scaler is not None and "grad_scaler" in state:
            self.scaler.load_state_dict(state["grad_scaler"])
        torch.set_rng_state(state["torch_rng"])
        np.random.set_state(state["numpy_rng"])
        self.step, self.tokens_seen = state["step"], state["tokens_seen"]
        self.train_seconds = state.get("train_seconds", 0.0)
        if self.dist.is_main:
            self._truncate_metrics(self.step)
        log.info("resumed from %s at step %d", ckpts[-1], self.step)

    def _truncate_metrics(self, step: int) -> None:
        """Drop records logged after the checkpoint (a run killed between a log line and its next save), so the
        resumed run's metrics read like the uninterrupted run's."""
        path = self.run_dir / "metrics.jsonl"
        if not path.is_file():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:
                pass  # a line cut short by the kill
        atomic_write_text(path, "".join(l + "\n" for l in kept))

    # --- metrics ---------------------------------------------------------------------------------------------------
    def log_metrics(self, record: dict) -> None:
        if not self.dist.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "kind"):
                    self._tb.add_scalar(f"{record['kind']}/{k}", v, record["step"])

    def _open_tensorboard(self) -> None:
        """TensorBoard when installed (optional: metrics.jsonl is the record)."""
        if not self.dist.is_main:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return
        self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))

    def autocast(self):
        if self.autocast_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def mfu(self, tokens_per_s: float, step: int) -> float:
        """Model FLOPs utilisation: achieved training FLOP/s over the peak of all processes (PaLM appendix B)."""
        flops = flops_per_token(self.model_cfg, self.context_at(step))["train"]
        return tokens_per_s * flops / max(1.0, self.peak_flops * self.dist.world)

    # --- one step --------------------------------------------------------------------------------------------------
    def train_step(self) -> dict:
        cfg, d = self.cfg, self.dist
        self.wrapped.train()
        lr = lr_at(self.step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)  # µP groups carry their own scale
        context = self.context_at(self.step)
        batch_size = self.batch_at(context)
        tokens = self.split_at(self.step).tokens
        totals: dict[str, float] = {}
        counts: dict[str, int] = {}
        own: dict[str, dict[str, float]] = {}
        for micro in range(cfg.grad_accum):
            name = choose_objective(self.weights, cfg.seed, self.step, micro)
            windows, _ = sample_windows(tokens, batch_size, context, cfg.seed, self.step, micro, d.rank, d.world,
                                        cfg.grad_accum)
            rng = np.random.default_rng([cfg.seed, self.step, micro, d.rank, 104729])
            batch = self.objectives[name].make_batch(windows, rng).to(self.device)
            with distributed.grad_sync(self.wrapped, d.mode, micro == cfg.grad_accum - 1):
                with self.autocast():
                    loss, metrics = self.objectives[name].loss(self.wrapped, batch)
                scaled = loss / cfg.grad_accum
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            totals["loss"] = totals.get("loss", 0.0) + float(loss.detach()) / cfg.grad_accum
            # each objective's own metrics, averaged over the micro-batches that drew it (a MIM loss sums two
            # directions, so a mixed run's plain average jumps between objectives)
            counts[name] = counts.get(name, 0) + 1
            for k, v in {f"loss_{name}": loss.detach(), **metrics}.items():
                own.setdefault(name, {})[k] = own.get(name, {}).get(k, 0.0) + float(v)
            self.tokens_seen += windows.size * d.world
            self.model_tokens += batch.x.numel() * d.world  # what the model read: a MIM window counts twice
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
        if cfg.grad_clip > 0:
            norm = clip_gradients(self.model, self.optimizer, cfg.grad_clip, folded=self.scaler is None)
            totals["grad_norm"] = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
            self.optimizer.__dict__.pop("grad_scale", None)  # clip_gradients' coefficient is for this step only
        self.optimizer.zero_grad(set_to_none=True)
        for name, n in counts.items():
            totals.update({k: v / n for k, v in own[name].items()})
        self.step += 1
        totals["lr"] = lr
        totals["context"] = context
        return totals

    # --- validation ------------------------------------------------------------------------------------------------
    def val_context(self) -> int:
        """The validation window: the context, or what a small validation split holds (a run that trained for hours
        must not stop at its final validation because the split is short; fit() warns at the start instead)."""
        return min(self.context, len(self.val_split.tokens) - 1)

    @torch.no_grad()
    def validate(self) -> dict:
        """Every objective's loss on the same fixed validation windows, in nats/token and bits/byte. Every rank
        computes the same numbers (FSDP's forward is collective; the windows are few)."""
        self.model.eval()
        tokens = self.val_split.tokens
        T = self.val_context()
        if T < 2:
            return {}
        n_windows = max(1, min(self.cfg.eval_tokens // T, (len(tokens) - 1) // T))
        starts = np.linspace(0, len(tokens) - T - 1, n_windows).astype(np.int64)
        sums: dict[str, list[float]] = {}
        rng = np.random.default_rng([self.cfg.seed, 424242])  # fixed FIM splits etc. at every validation
        validators = dict(self.objectives)
        if "l2r" not in validators and "mim" not in validators:  # mim_fwd already is the l2r loss
            # so every run reports the plain left-to-right loss (in the layout it trained on)
            validators["l2r"] = LeftToRight(self.tokenizer, attention_mask=self.cfg.attention_mask)
        for i in range(0, n_windows, self.cfg.batch_size):
            windows = np.stack([np.asarray(tokens[s:s + T]) for s in starts[i:i + self.cfg.batch_size]])
            for name, objective in validators.items():
                batch = objective.make_batch(windows, rng, split="val").to(self.device)
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
    def auto_compile(self, last_step: int) -> None:
        """Measure the matmul peak (for MFU) and, with --compile unset, compile the blocks when the steps up to
        `last_step` are long enough to repay it (compile_repays)."""
        cfg = self.cfg
        self.peak_flops = self.peak_flops or cfg.peak_flops or measure_peak_flops(self.device, self.autocast_dtype)
        if cfg.compile is None and not self.compiled:
            tokens_per_step = self.batch_at(self.context) * cfg.grad_accum * self.context * self.dist.world
            train_flops = flops_per_token(self.model_cfg, self.context)["train"]
            if compile_repays(last_step - self.step, tokens_per_step, train_flops, self.peak_flops * self.dist.world):
                log.info("compiling the blocks (--compile unset: this run is long enough to repay it; "
                         "--compile false to skip)")
                compile_blocks(self.model)
                compile_losses(self.objectives)
                self.compiled = True

    def fit(self, stop_at: int | None = None) -> dict:
        """Train to cfg.steps (or stop early at `stop_at`, checkpointed, as an interrupted run would be)."""
        cfg = self.cfg
        last_step = min(cfg.steps, stop_at) if stop_at is not None else cfg.steps
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config({"train": asdict(cfg), "model": self.model_cfg.to_dict(),
                         "tokenizer": self.tokenizer.describe(), "data_manifest_hash": self.shards.manifest_hash,
                         "world": self.dist.world, "parallel": self.dist.mode}, self.run_dir / "config.json")
        self._open_tensorboard()
        if self.val_context() < self.context:
            n = len(self.val_split.tokens)
            log.warning("the validation split has %d tokens, fewer than one window of %d: %s", n, self.context,
                        f"validating on windows of {self.val_context()}" if self.val_context() >= 2
                        else "no validation losses")
        self.auto_compile(last_step)
        log.info("model: %.2fM parameters, %.1f MFLOPs/token (train), context %d, objective %s, device %s x %d (%s), "
                 "%s, peak %.0f GFLOP/s per process", count_parameters(self.model) / 1e6,
                 flops_per_token(self.model_cfg, self.context)["train"] / 1e6, self.context, cfg.objective,
                 self.device, self.dist.world, self.dist.mode, _precision_name(self.autocast_dtype),
                 self.peak_flops / 1e9)
        last_val: dict = {}
        self._last_losses: dict[str, float] = {}
        window_t0, window_tokens, window_read, window_steps = time.perf_counter(), 0, 0, 0
        while self.step < last_step:
            t0 = time.perf_counter()
            tokens_before, read_before = self.tokens_seen, self.model_tokens
            metrics = self.train_step()
            self._last_losses.update({k[5:]: v for k, v in metrics.items() if k.startswith("loss_")})
            self.train_seconds += time.perf_counter() - t0
            window_tokens += self.tokens_seen - tokens_before
            window_read += self.model_tokens - read_before
            window_steps += 1
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                self._log_progress(metrics, window_tokens, time.perf_counter() - window_t0, window_steps,
                                   window_read / max(window_tokens, 1))
                window_t0, window_tokens, window_read, window_steps = time.perf_counter(), 0, 0, 0
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.steps:
                last_val = self._evaluate()
                window_t0, window_tokens, window_read, window_steps = time.perf_counter(), 0, 0, 0  # eval: not in tok/s
            if cfg.save_every and self.step % cfg.save_every == 0 and self.step < cfg.steps:
                self.save()
                window_t0, window_tokens, window_read, window_steps = time.perf_counter(), 0, 0, 0
        path = self.save()  # first: nothing that runs after the last step (evaluation, callbacks) can lose the run
        last_val = self._evaluate()
        summary = {"step": self.step, "tokens": self.tokens_seen, "checkpoint": str(path), **last_val}
        if self.dist.is_main:
            self._write_plots()
            log.info("done: %s", ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                             for k, v in summary.items()))
        if self._tb is not None:
            self._tb.close()
        return summary

    def _log_progress(self, metrics: dict, tokens: int, elapsed: float, steps: int, read: float = 1.0) -> None:
        """`read`: tokens the model processed per window token in this stretch (2 for MIM's two directions)."""
        metrics = distributed.all_reduce_mean(metrics, self.dist.world)  # every rank saw its own slice
        metrics["context"] = int(metrics["context"])
        tok_s = tokens / max(elapsed, 1e-9)
        mfu = self.mfu(tok_s * read, self.step - 1)
        eta = (self.cfg.steps - self.step) * elapsed / max(1, steps)
        rss, peak_rss = resident_memory()
        self.log_metrics({"kind": "train", "step": self.step, "tokens": self.tokens_seen, "tok_s": round(tok_s, 1),
                          "mfu": round(mfu, 4), "rss_mb": round(rss / 2**20), "peak_rss_mb": round(peak_rss / 2**20),
                          **metrics})
        if self.dist.is_main:
            log.info("step %d/%d | %s | lr %.2e | %s tok/s | MFU %.1f%% | RSS %.2f GB (peak %.2f) | ETA %s",
                     self.step, self.cfg.steps, self._loss_text(), metrics["lr"], f"{tok_s:,.0f}", 100 * mfu,
                     rss / 2**30, peak_rss / 2**30, _format_duration(eta))

    def _loss_text(self) -> str:
        """`loss 2.31` for one objective; for a mixture each objective's own latest loss, MIM's per direction
        (`loss fim 2.31 mim fwd 2.40 bwd 2.52`), so alternating objectives do not read like divergence. An objective
        the last step did not draw shows its loss from the last step that did."""
        last = self._last_losses
        if len(self.weights) == 1 and "mim" not in self.weights:
            return f"loss {last.get(next(iter(self.weights)), float('nan')):.4f}"
        parts = []
        for name in sorted(self.weights):
            if name == "mim" and "mim_fwd" in last:
                parts.append(f"mim fwd {last['mim_fwd']:.4f} bwd {last['mim_bwd']:.4f}")
            elif name in last:
                parts.append(f"{name} {last[name]:.4f}")
        return "loss " + " ".join(parts)

    def _evaluate(self) -> dict:
        t0 = time.perf_counter()
        val = self.validate()
        if self.dist.is_main or self.dist.mode == "fsdp":
            for callback in self.callbacks:
                val.update(callback(self, self.step))
        self.log_metrics({"kind": "val", "step": self.step, "tokens": self.tokens_seen, **val})
        if self.dist.is_main:
            log.info("val @ %d: %s (%.1fs)", self.step, ", ".join(f"{k} {v:.4f}" for k, v in val.items()
                                                                  if isinstance(v, float)), time.perf_counter() - t0)
        return val

    def _write_plots(self) -> None:
        if not self.cfg.plot:
            return
        try:
            from codelm.runs import plot_runs
            plot_runs([self.run_dir], self.run_dir / "loss.png")
        except ImportError as e:  # matplotlib is a dependency, but a plot is never worth failing a run for
            log.warning("no loss plot: %s", e)


def _check_objective_tokens(weights: dict, tokenizer, init_from: str) -> None:
    """FIM and MIM need their sentinels and backward marker in the vocabulary (an imported model gets them from
    `codelm import-hf --add-tokens fim,mim`)."""
    needs = {"fim": ("fim_prefix_id", "fim_middle_id", "fim_suffix_id"), "mim": ("r2l_id",)}
    for name, attrs in needs.items():
        if name in weights and any(getattr(tokenizer, a, None) is None for a in attrs):
            raise ConfigError(f"--objective {name}: tokenizer {tokenizer.name!r} has no "
                              f"{'FIM sentinels' if name == 'fim' else '<|r2l|>'}"
                              + ("; import the model with `codelm import-hf --add-tokens fim,mim`" if init_from
                                 else ""))


def _pretraining_schedule(init) -> dict | None:
    """The --init-from checkpoint's peak and final learning rates, when it recorded them."""
    meta = init.meta or {}
    if meta.get("lr_peak"):
        return {"lr_peak": meta["lr_peak"], "lr_final": meta["lr_final"]}
    return None


def _precision_name(dtype) -> str:
    return {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast + grad scaler"}[dtype]

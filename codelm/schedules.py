"""Schedules as pure functions of the step: learning rate, context length, data blend; and named training recipes.

Everything here depends only on (step, config), never on mutable state, so a resumed run (one process or many)
recomputes exactly what the uninterrupted one used: nothing to save, nothing to drift.

Learning rate: linear warmup to the peak, then a named decay to `min_lr_ratio * peak` at the last step:
    cosine      half a cosine (GPT-3, Chinchilla; the MIM paper decays to 10%)
    linear      a straight line
    polynomial  (1 - progress)^2 (power 2, as in BERT/T5 setups; `--schedule polynomial:3` picks another power)
    inv-sqrt    peak * sqrt(warmup / step) (the original Transformer), floored
    wsd         warmup-stable-decay (MiniCPM): flat at the peak, then linear decay over the last 20% of the steps
                (`--schedule wsd:0.1` for a 10% decay phase)
    constant    the peak
"""

from __future__ import annotations

import math

from codelm.errors import ConfigError

SCHEDULES = ("cosine", "linear", "polynomial", "inv-sqrt", "wsd", "constant")


def parse_schedule(spec: str) -> tuple[str, float | None]:
    """'cosine' -> ('cosine', None); 'wsd:0.1' -> ('wsd', 0.1); 'polynomial:3' -> ('polynomial', 3.0)."""
    name, _, arg = spec.partition(":")
    name = {"inverse-sqrt": "inv-sqrt", "invsqrt": "inv-sqrt", "warmup-stable-decay": "wsd",
            "poly": "polynomial"}.get(name, name)
    if name not in SCHEDULES:
        raise ConfigError(f"unknown --schedule {spec!r}; choose {', '.join(SCHEDULES)}")
    if not arg:
        return name, None
    try:
        value = float(arg)
    except ValueError:
        raise ConfigError(f"bad --schedule {spec!r}: {arg!r} is not a number") from None
    if name == "wsd" and not 0 < value <= 1:
        raise ConfigError(f"bad --schedule {spec!r}: the decay fraction must be in (0, 1]")
    if name == "polynomial" and value <= 0:
        raise ConfigError(f"bad --schedule {spec!r}: the power must be positive")
    return name, value


def lr_multiplier(step: int, steps: int, warmup: int, schedule: str, floor: float) -> float:
    """The learning rate at `step` as a fraction of the peak (floor = final fraction)."""
    name, arg = parse_schedule(schedule)
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    if name == "cosine":
        return floor + 0.5 * (1 - floor) * (1 + math.cos(math.pi * progress))
    if name == "linear":
        return 1 + (floor - 1) * progress
    if name == "polynomial":
        return floor + (1 - floor) * (1 - progress) ** (arg or 2.0)
    if name == "inv-sqrt":
        return max(floor, math.sqrt(max(1, warmup) / max(1, step + 1)))
    if name == "wsd":
        decay_steps = max(1, round((arg or 0.2) * (steps - warmup)))
        into_decay = step - (steps - decay_steps)
        return 1.0 if into_decay < 0 else 1 + (floor - 1) * min(1.0, into_decay / decay_steps)
    return 1.0  # constant


def switch_step(steps: int, warmup: int, schedule: str, floor: float, fraction: float) -> int:
    """The first step after warmup whose learning rate is at or below `fraction` of the peak (Parmar et al. 2024
    switch to the high-quality blend at about a fifth of the peak); `steps` if it never gets that low."""
    for step in range(warmup, steps):
        if lr_multiplier(step, steps, warmup, schedule, floor) <= fraction + 1e-12:
            return step
    return steps


# ----------------------------------------------------------------------------------------------------------------
# Variable context length (BTLM-3B-8K: 75% of the steps at 2,048, then 8,192)
# ----------------------------------------------------------------------------------------------------------------
def parse_context_schedule(spec: str) -> list[tuple[float, int]]:
    """'0.75:2048,1.0:8192' -> [(0.75, 2048), (1.0, 8192)]: context 2048 until 75% of the steps, then 8192."""
    out = []
    for part in spec.split(","):
        frac, _, ctx = part.strip().partition(":")
        try:
            out.append((float(frac), int(ctx)))
        except ValueError:
            raise ConfigError(f"bad --context-schedule {spec!r}: use FRACTION:LENGTH,... e.g. 0.75:2048,1.0:8192") \
                from None
    if not out or any(c < 2 for _, c in out) or [f for f, _ in out] != sorted(f for f, _ in out) \
            or not 0 < out[0][0] or out[-1][0] < 1.0:
        raise ConfigError(f"bad --context-schedule {spec!r}: fractions must increase and end at 1.0, lengths >= 2")
    return out


def context_at(step: int, steps: int, schedule: list[tuple[float, int]]) -> int:
    for frac, ctx in schedule:
        if step < frac * steps:
            return ctx
    return schedule[-1][1]


# ----------------------------------------------------------------------------------------------------------------
# Named recipes: the papers' settings as TrainConfig values (explicit flags still win)
# ----------------------------------------------------------------------------------------------------------------
# MIM (arXiv 2303.07295, section 4.1): AdamW, cosine to 10%, ~1M-token batches at context 2048.
# 512 windows x 2048 tokens = 1,048,576 tokens per step; batch_size x grad_accum x world = 512 (see `fit_batch`).
RECIPES: dict[str, dict] = {
    "mim-350m": dict(preset="350m", lr=3e-4, warmup_steps=7000, schedule="cosine", min_lr_ratio=0.1,
                     context_length=2048, global_batch=512),
    "mim-1.3b": dict(preset="1.3b", lr=2e-4, warmup_steps=5000, schedule="cosine", min_lr_ratio=0.1,
                     context_length=2048, global_batch=512),
    "mim-2.7b": dict(preset="2.7b", lr=2e-4, warmup_steps=5000, schedule="cosine", min_lr_ratio=0.1,
                     context_length=2048, global_batch=512),
    # Parmar et al. 2024 (second-hand; ARCHITECTURE.md): no warmup, start near the pretraining run's final LR, cosine
    # down to 1/100 of the pretraining peak, switch blends at a fifth of the peak. The trainer fills in lr and
    # min_lr_ratio from the --init-from checkpoint when it recorded its schedule.
    "continued": dict(warmup_steps=0, schedule="cosine", min_lr_ratio=0.01, switch_at_lr_fraction=0.2),
}


def fit_batch(global_batch: int, batch_size: int, world: int) -> tuple[int, int]:
    """(batch_size, grad_accum) with batch_size x grad_accum x world == global_batch, keeping batch_size as large
    as asked (memory) but no larger than needed."""
    per_rank = global_batch // world
    if per_rank * world != global_batch:
        raise ConfigError(f"the recipe's global batch of {global_batch} windows does not divide over {world} "
                          f"processes")
    batch_size = max(1, min(batch_size, per_rank))
    while per_rank % batch_size:
        batch_size -= 1
    return batch_size, per_rank // batch_size

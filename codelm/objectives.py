"""Training objectives: how raw token windows become model inputs, targets and a loss.

An objective sees windows of `context_length` raw tokens cut from the packed shards (documents separated by
end-of-text) and returns a `Batch`; its `loss` runs the model and returns the scalar to minimise plus named metrics.
A run mixes objectives over windows (`--objective mim:0.5,fim:0.5`): `parse_mixture` reads that spec.

l2r (next-token prediction): every forward window starts with the `<|l2r|>` marker, its BOS token (DESIGN.md), so
    x = [<l2r>, w0 .. w_{T-2}],  y = [w0 .. w_{T-1}]
and the loss covers all T tokens of the window.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from codelm.errors import ConfigError

IGNORE = -100  # target id excluded from the loss (padding, prompts in completion-only fine-tuning)


@dataclass
class Batch:
    x: torch.Tensor                 # [B, T] inputs
    y: torch.Tensor                 # [B, T] targets (IGNORE where no loss)
    objective: str
    extra: dict = field(default_factory=dict)

    def to(self, device) -> "Batch":
        extra = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in self.extra.items()}
        return Batch(self.x.to(device), self.y.to(device), self.objective, extra)

    @property
    def n_tokens(self) -> int:
        return int((self.y != IGNORE).sum())


def next_token_loss(logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=IGNORE,
                           reduction=reduction)


class LeftToRight:
    name = "l2r"

    def __init__(self, tokenizer, **_):
        self.marker = tokenizer.l2r_id

    def make_batch(self, windows: np.ndarray, rng: np.random.Generator | None = None) -> Batch:
        w = torch.from_numpy(windows.astype(np.int64))
        x = torch.cat([torch.full((w.shape[0], 1), self.marker, dtype=torch.long), w[:, :-1]], dim=1)
        return Batch(x, w, self.name)

    def loss(self, model, batch: Batch) -> tuple[torch.Tensor, dict]:
        loss = next_token_loss(model(batch.x), batch.y)
        return loss, {"loss_l2r": loss.detach()}

    def val_metrics(self, model, batch: Batch) -> dict[str, tuple[float, int]]:
        """Summed nats and token counts per reported stream, for exact averaging over many batches."""
        nats = next_token_loss(model(batch.x), batch.y, reduction="sum")
        return {"l2r": (float(nats), batch.n_tokens)}


OBJECTIVES = {"l2r": LeftToRight}


def parse_mixture(spec: str) -> dict[str, float]:
    """'mim' -> {'mim': 1.0}; 'mim:0.5,fim:0.5' -> weights over windows (normalised to sum 1)."""
    weights: dict[str, float] = {}
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        name, _, w = part.partition(":")
        if name not in OBJECTIVES:
            raise ConfigError(f"unknown objective {name!r} in --objective {spec!r}; choose from "
                              f"{', '.join(OBJECTIVES)}")
        try:
            weight = float(w) if w else 1.0
        except ValueError:
            raise ConfigError(f"bad weight {w!r} for objective {name!r} in --objective {spec!r}") from None
        if weight < 0:
            raise ConfigError(f"negative weight for objective {name!r} in --objective {spec!r}")
        weights[name] = weights.get(name, 0.0) + weight
    total = sum(weights.values())
    if not weights or total <= 0:
        raise ConfigError(f"--objective {spec!r} names no objective with a positive weight")
    return {k: v / total for k, v in weights.items() if v > 0}


def build_objectives(spec: str, tokenizer, **options) -> dict[str, object]:
    return {name: OBJECTIVES[name](tokenizer, **options) for name in parse_mixture(spec)}

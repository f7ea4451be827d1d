"""Decoding, in gpt-fast's manner: small pure functions and a per-token callback (the streaming hook).

    logits_to_probs -> sample -> prefill -> decode_one_token -> decode_n_tokens(callback) -> generate

The right BOS marker (`<|l2r|>`) is added for codelm models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 0.0      # 0 = greedy
    top_k: int = 0                # 0 = off
    top_p: float = 1.0            # 1 = off
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


def logits_to_probs(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """logits [B, V] -> probabilities after temperature, top-k and nucleus (top-p) truncation."""
    logits = logits / max(temperature, 1e-5)
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        cumulative = sorted_probs.cumsum(-1)
        drop = cumulative - sorted_probs > top_p  # keep the smallest set whose mass reaches top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """logits [B, V] -> next token ids [B]."""
    if params.temperature <= 0:
        return logits.argmax(-1)
    probs = logits_to_probs(logits.float(), params.temperature, params.top_k, params.top_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def prefill(model, ids: torch.Tensor) -> torch.Tensor:
    """Run the prompt through the model, filling the KV cache; returns the last position's logits [B, V]."""
    return model(ids)[:, -1]


@torch.no_grad()
def decode_one_token(model, token: torch.Tensor) -> torch.Tensor:
    return model(token.view(-1, 1))[:, -1]


def decode_n_tokens(model, first_logits: torch.Tensor, params: SamplingParams, generator,
                    callback: Callable[[int], bool] | None, stop_ids: set[int]) -> list[int]:
    """Sample up to max_new_tokens; `callback(token_id)` returning False stops early (a stop string, a client gone)."""
    out: list[int] = []
    logits = first_logits
    for _ in range(params.max_new_tokens):
        token = sample(logits, params, generator)
        tid = int(token[0])
        if tid in stop_ids:
            break
        out.append(tid)
        if callback is not None and callback(tid) is False:
            break
        if model.cache_length >= model.config.context_length:
            break
        logits = decode_one_token(model, token)
    return out


class StopChecker:
    """Finds the earliest stop string in decoded text, also when it spans several tokens."""

    def __init__(self, stop: list[str]):
        self.stop = [s for s in stop if s]

    def cut(self, text: str) -> tuple[str, bool]:
        positions = [text.find(s) for s in self.stop]
        positions = [p for p in positions if p >= 0]
        if not positions:
            return text, False
        return text[:min(positions)], True


@torch.no_grad()
def generate(model, tokenizer, prompt: str, params: SamplingParams | None = None,
             on_text: Callable[[str], None] | None = None) -> str:
    """Complete `prompt`; returns the completion text (cut at the first stop string)."""
    params = params or SamplingParams()
    device = next(model.parameters()).device
    limit = model.config.context_length
    ids = [tokenizer.l2r_id] + tokenizer.encode(prompt)[-(limit - 2):]  # room for the marker and one new token
    max_new = min(params.max_new_tokens, limit - len(ids))
    params = SamplingParams(**{**params.__dict__, "max_new_tokens": max_new})
    generator = None
    if params.seed is not None:
        generator = torch.Generator(device=device).manual_seed(params.seed)
    model.setup_cache(1, limit)
    try:
        stopper = StopChecker(params.stop)
        generated: list[int] = []
        state = {"emitted": 0}

        def on_token(tid: int) -> bool:
            generated.append(tid)
            text = tokenizer.decode_bytes(generated).decode("utf-8", errors="ignore")
            text, stopped = stopper.cut(text)
            if on_text is not None and len(text) > state["emitted"]:
                on_text(text[state["emitted"]:])
                state["emitted"] = len(text)
            return not stopped

        first = prefill(model, torch.tensor([ids], device=device))
        decode_n_tokens(model, first, params, generator, on_token, {tokenizer.eot_id})
    finally:
        model.clear_cache()
    text = tokenizer.decode(generated)
    return StopChecker(params.stop).cut(text)[0]

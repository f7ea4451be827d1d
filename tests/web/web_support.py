"""Helpers for the serving tests: a random micro model, a real uvicorn server on 127.0.0.1, polling."""

from __future__ import annotations



def random_model(context_length: int = 1024, seed: int = 0):
    """An untrained micro model with peaky random weights: varied tokens, rarely an end-of-text, so generation
    runs as long as it is allowed to (what batching and cancellation tests need). No training needed."""
    import torch
    from codelm.model import ModelConfig, Transformer
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=16448, n_layer=2, n_head=2, d_model=64, context_length=context_length, init_std=0.3)
    return Transformer(cfg).eval()


from support import free_port, live_server, wait_until  # noqa: E402,F401  (shared with tests/evals)

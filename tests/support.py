"""Helpers shared by test files (import as `from support import ...`; a module named conftest would be ambiguous
between the test folders)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def stdlib_texts(n: int = 60) -> list[str]:
    """The first n modules of the default corpus: real Python, deterministic for an interpreter version."""
    from codelm.data.sources import stdlib_documents
    docs = []
    for doc in stdlib_documents():
        if 2_000 < len(doc.text) < 40_000:
            docs.append(doc.text)
        if len(docs) == n:
            break
    return docs


def make_shards(out: Path, texts: list[str], tokenizer, val_texts: list[str] | None = None) -> Path:
    from codelm.data.shards import write_shards
    if val_texts is None:  # hold out the last three documents
        texts, val_texts = texts[:-3], texts[-3:]
    train_texts = texts
    splits = {"train": tokenizer.encode_batch(train_texts), "val": tokenizer.encode_batch(val_texts)}
    nbytes = {"train": sum(len(t.encode()) for t in train_texts), "val": sum(len(t.encode()) for t in val_texts)}
    return write_shards(out, splits, nbytes, tokenizer, {"source": "test"})


# a model small enough to train a few steps in seconds on 2 cores
MICRO_MODEL = {"n_layer": 2, "n_head": 2, "d_model": 64, "context_length": 128}


def micro_train_config(data: Path, out: Path, **kw):
    from codelm.train import TrainConfig
    base = dict(data=str(data), out=str(out), preset="tiny", model=dict(MICRO_MODEL), steps=20, batch_size=4,
                context_length=64, lr=3e-3, warmup_steps=2, eval_every=0, eval_tokens=1024, save_every=0,
                log_every=5, precision="fp32", seed=0, compile=False)
    base.update(kw)
    return TrainConfig(**base)


def assert_resume_is_bit_exact(data: Path, tmp: Path, stop_at: int, **kw):
    """A run interrupted at `stop_at` and resumed ends with the uninterrupted run's weights and logged losses.
    Returns the uninterrupted run's Trainer."""
    import json
    import torch
    from codelm.train import Trainer
    full = Trainer(micro_train_config(data, tmp / "full", **kw))
    full.fit()
    part = Trainer(micro_train_config(data, tmp / "part", **kw))
    part.fit(stop_at=stop_at)  # stops with a checkpoint, as an interrupted run would have
    resumed = Trainer(micro_train_config(data, tmp / "part", resume=True, **kw))
    assert resumed.step == stop_at
    resumed.fit()
    for a, b in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    losses = lambda run: [m["loss"] for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                          if m["kind"] == "train"]
    assert losses(tmp / "full") == losses(tmp / "part")
    return full


# ---- a real uvicorn server on 127.0.0.1 (loopback only) ----
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def live_server(app):
    """Run `app` under a real uvicorn server on 127.0.0.1 in a thread; yields its base URL."""
    import uvicorn
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(600):  # wait until it listens (bounded: 30 s)
        if server.started:
            break
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def wait_until(predicate, timeout: float = 60.0, interval: float = 0.02) -> bool:
    """Poll until predicate() is true; a generous bound so slow shared machines do not fail tests."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def random_checkpoint(path: Path, tokenizer_name: str = "cl100k_base:1024", **kw) -> Path:
    """A small random codelm checkpoint for interop tests (HF, GGUF); `kw` overrides the model config."""
    import torch
    from codelm.checkpoint import save_checkpoint
    from codelm.model import ModelConfig, Transformer
    from codelm.tokenizer import get_tokenizer, padded_vocab_size
    tok = get_tokenizer(tokenizer_name)
    torch.manual_seed(0)
    cfg = ModelConfig(**{**dict(vocab_size=padded_vocab_size(tok.n_vocab), context_length=64, n_layer=2, n_head=4,
                                d_model=64, tokenizer=tok.name), **kw})
    model = Transformer(cfg).eval()
    with torch.no_grad():  # norm gains and biases start at 1 / 0: randomise them so a mapping mistake shows
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return save_checkpoint(path, model, tok)


def wandering_model(tokenizer_name: str = "cl100k_base:1024", context_length: int = 128):
    """(model, tokenizer, capabilities): a random micro model with large weights, whose greedy text wanders instead
    of repeating one token (so stop strings end its generations after different numbers of tokens), with
    capabilities that allow both infilling modes. For decoding mechanics that need no trained model."""
    import torch
    from codelm.checkpoint import default_capabilities
    from codelm.model import ModelConfig, Transformer
    from codelm.tokenizer import get_tokenizer, padded_vocab_size
    tok = get_tokenizer(tokenizer_name)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=padded_vocab_size(tok.n_vocab), n_layer=2, n_head=2, d_model=64,
                                    context_length=context_length, init_std=0.15, tokenizer=tok.name)).eval()
    return model, tok, default_capabilities(tok, context_length, {"mim": 0.5, "fim": 0.5})

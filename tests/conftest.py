"""Shared fixtures: small real objects (a tokenizer, shards from real code, a tiny model trained in seconds)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


def pytest_configure(config):
    os.environ.setdefault("CODELM_DATA_DIR", str(SHARED_DATA))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tokenizer():
    from codelm.tokenizer import get_tokenizer
    return get_tokenizer("cl100k_base:16384")


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
    val_texts = val_texts if val_texts is not None else texts[-3:]
    train_texts = texts if val_texts is not texts[-3:] else texts[:-3]
    splits = {"train": tokenizer.encode_batch(train_texts), "val": tokenizer.encode_batch(val_texts)}
    nbytes = {"train": sum(len(t.encode()) for t in train_texts), "val": sum(len(t.encode()) for t in val_texts)}
    return write_shards(out, splits, nbytes, tokenizer, {"source": "test"})


@pytest.fixture(scope="session")
def small_shards(tmp_path_factory, tokenizer) -> Path:
    return make_shards(tmp_path_factory.mktemp("shards") / "stdlib60", stdlib_texts(60), tokenizer)


# a model small enough to train a few steps in seconds on 2 cores
MICRO_MODEL = {"n_layer": 2, "n_head": 2, "d_model": 64, "context_length": 128}


def micro_train_config(data: Path, out: Path, **kw):
    from codelm.train import TrainConfig
    base = dict(data=str(data), out=str(out), preset="tiny", model=dict(MICRO_MODEL), steps=20, batch_size=4,
                context_length=64, lr=3e-3, warmup_steps=2, eval_every=0, eval_tokens=1024, save_every=0,
                log_every=5, precision="fp32", seed=0)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, small_shards) -> Path:
    """A micro model trained for 40 steps; its run directory."""
    from codelm.train import Trainer
    out = tmp_path_factory.mktemp("runs") / "micro"
    Trainer(micro_train_config(small_shards, out, steps=40)).fit()
    return out

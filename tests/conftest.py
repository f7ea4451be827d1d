"""Shared fixtures: small real objects (a tokenizer, shards from real code, a tiny model trained in seconds)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from support import make_shards, micro_train_config, stdlib_texts


def pytest_configure(config):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tokenizer():
    from codelm.tokenizer import get_tokenizer
    return get_tokenizer("cl100k_base:16384")


@pytest.fixture(scope="session")
def small_shards(tmp_path_factory, tokenizer) -> Path:
    return make_shards(tmp_path_factory.mktemp("shards") / "stdlib60", stdlib_texts(60), tokenizer)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, small_shards) -> Path:
    """A micro model trained for 40 steps; its run directory."""
    from codelm.train import Trainer
    out = tmp_path_factory.mktemp("runs") / "micro"
    Trainer(micro_train_config(small_shards, out, steps=40)).fit()
    return out

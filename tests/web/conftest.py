"""Fixtures for the serving tests: small real models and a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from web_support import random_model

ROOT_CONFTEST = Path(__file__).resolve().parent.parent / "conftest.py"


def micro_train_config(*args, **kw):
    """tests/conftest.py's helper (both files are named conftest, so it is loaded by path)."""
    spec = importlib.util.spec_from_file_location("codelm_tests_root_conftest", ROOT_CONFTEST)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.micro_train_config(*args, **kw)


@pytest.fixture(scope="session")
def fim_mim_run(tmp_path_factory, small_shards) -> Path:
    """A micro model trained a few steps with objective mim:0.5,fim:0.5: it may infill both ways (badly)."""
    from codelm.train import Trainer
    out = tmp_path_factory.mktemp("runs") / "fim_mim"
    Trainer(micro_train_config(small_shards, out, steps=12, objective="mim:0.5,fim:0.5")).fit()
    return out


@pytest.fixture(scope="session")
def fim_mim_ckpt(fim_mim_run):
    from codelm.loader import load_checkpoint
    return load_checkpoint(fim_mim_run)


@pytest.fixture(scope="session")
def l2r_ckpt(trained_run):
    from codelm.loader import load_checkpoint
    return load_checkpoint(trained_run)



@pytest.fixture(scope="session")
def random_ckpt(tmp_path_factory, tokenizer):
    from codelm.checkpoint import save_checkpoint
    from codelm.loader import load_checkpoint
    path = save_checkpoint(tmp_path_factory.mktemp("ckpt") / "random", random_model(), tokenizer)
    return load_checkpoint(path)

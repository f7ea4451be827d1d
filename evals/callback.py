"""Evaluation during training: a Trainer callback that scores the model being trained on a small infilling set.

  callbacks=[make_infill_callback("random-span-light", limit=20, every=500)]
  -> at each validation whose step is a multiple of `every`: {"infill_pass@1": ..., "infill_exact_match": ...}

The Trainer (codelm/train.py) calls fn(trainer, step) at each validation and logs the returned metrics with the
validation losses (kind "val" in metrics.jsonl), so `codelm runs plot` can draw them. codelm/cli.py hands the callback
over for `codelm train --eval-infill-every N`; codelm itself never imports evals.

The model is evaluated in memory (trainer.model, trainer.tokenizer, trainer.capabilities()): greedy decoding, then
the usual sandboxed scoring; samples and verdicts are kept under <run>/evals/infill-<set>-step<N>/. The model is put in
eval mode for generation and back in train mode afterwards. On a sharded (FSDP) run generation would be a collective
on every rank; this callback evaluates on the main rank only and is meant for single-process and DDP runs.
"""

import contextlib
import io
from types import SimpleNamespace

from evals import infilling, runner
from evals.models import CodelmModel


def trainer_model(trainer, step: int) -> CodelmModel:
    """A CompletionModel over the model in memory, shaped like a loaded checkpoint."""
    checkpoint = SimpleNamespace(model=trainer.model, tokenizer=trainer.tokenizer,
                                 capabilities=trainer.capabilities(), path=f"{trainer.run_dir}@step{step}")
    return CodelmModel(checkpoint)


def make_infill_callback(benchmark_set: str = "random-span-light", limit: int | None = 20, mode: str = "fim",
                         every: int = 1, max_new_tokens: int = 64, data_dir=None, workers: int | None = None):
    benchmark = infilling.load(benchmark_set, data_dir, mode=mode)  # load (and fail) now, not mid-run
    sampling = runner.resolve_sampling([1], max_new_tokens=max_new_tokens)  # greedy, n = 1

    def evaluate_infilling(trainer, step: int) -> dict:
        if step % every or not trainer.dist.is_main:
            return {}
        model = trainer_model(trainer, step)
        out_dir = trainer.run_dir / "evals" / f"infill-{benchmark_set}-step{step:07d}"
        was_training = trainer.model.training
        trainer.model.eval()
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the report table belongs in the eval dir, not the log
                summary = runner.evaluate_model(benchmark, model, out_dir, sampling, limit=limit, workers=workers,
                                                stream=io.StringIO())
        finally:
            trainer.model.train(was_training)
        return {"infill_pass@1": summary.get("pass@1", 0.0), "infill_exact_match": summary.get("exact_match", 0.0)}

    return evaluate_infilling

"""vLLM's offline engine (`LLM.generate`) with codelm's generation contract, for sampling many completions per
problem on a GPU.

Each sample is its own request with n=1 and its own seed (vLLM's prefix cache shares the prompt's KV between the
requests of one prompt), so sample j of a task depends on its seed as with the other backends. vLLM does NOT promise
bit-identical samples across batch compositions: its kernels batch requests differently from run to run, so a seeded
sample is reproducible in distribution and usually in text, not guaranteed to the token. Prompts are built exactly as
the transformers backend builds them (the model's BOS handling, the family FIM template), and passed as token ids.

vLLM pins its own torch and transformers, so it lives in its own virtualenv (`make vllm-env`), never in the main one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from codelm.backends.transformers_lm import HFPrompts
from codelm.errors import CheckpointError, ConfigError
from codelm.generate import Completion, SamplingParams, expand_seeds
from codelm.stops import find_stop
from codelm.terms import EOT, LENGTH, STOP

NOT_INSTALLED = ("the vllm backend needs vLLM, which pins its own torch and transformers: `make vllm-env`, then run "
                 "codelm from .venv-vllm/bin/codelm")


def require_vllm():
    try:
        import vllm
    except ImportError:
        raise ConfigError(NOT_INSTALLED) from None
    return vllm


class VllmLM(HFPrompts):
    def __init__(self, llm, hf_tokenizer, model_config, *, name: str = "vllm", dtype: str = "auto"):
        super().__init__(hf_tokenizer, model_config, name=name,
                         extra_eos=getattr(model_config, "eos_token_id", None))
        self.llm = llm
        self.dtype = dtype

    @classmethod
    def load(cls, path: str | os.PathLike, *, dtype: str = "auto", trust_remote_code: bool = False,
             tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.9,
             max_model_len: int | None = None) -> "VllmLM":
        vllm = require_vllm()
        path = Path(path)
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{path}: not a Hugging Face model directory (no config.json)")
        dtype = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}.get(dtype, dtype)
        llm = vllm.LLM(model=str(path), tokenizer=str(path), dtype=dtype, trust_remote_code=trust_remote_code,
                       tensor_parallel_size=tensor_parallel_size, gpu_memory_utilization=gpu_memory_utilization,
                       max_model_len=max_model_len, enable_prefix_caching=True, seed=0)
        hf_config = llm.llm_engine.model_config.hf_config
        return cls(llm, llm.get_tokenizer(), hf_config, name=str(path), dtype=dtype)

    def describe(self) -> dict:
        return {"backend": "vllm", "dtype": self.dtype, "fim_family": self.fim_family, "bos_head": self.head,
                "note": "vLLM does not promise bit-identical samples across batch compositions"}

    def requests(self, prompt_ids: Sequence[Sequence[int]], params: SamplingParams, seeds=None, n: int = 1,
                 stop_ids: frozenset[int] | None = None) -> list[tuple[list[int], dict]]:
        """(prompt ids, vllm.SamplingParams keyword arguments) for every sample: n=1 requests, one seed each."""
        rows = expand_seeds(seeds, len(prompt_ids), n, params.seed)
        stop_ids = sorted(self.eos_ids if stop_ids is None else stop_ids)
        out = []
        for i, ids in enumerate(prompt_ids):
            budget = max(min(params.max_new_tokens, self.context_length - len(ids)), 1)
            for j in range(n):
                out.append((list(ids), dict(n=1, temperature=params.temperature, top_p=params.top_p,
                                            top_k=params.top_k if params.top_k > 0 else -1, max_tokens=budget,
                                            seed=rows[i * n + j], stop=list(params.stop),
                                            stop_token_ids=stop_ids, logprobs=None,
                                            skip_special_tokens=True)))
        return out

    def generate_ids(self, prompt_ids, params, seeds=None, n=1, stop_ids=None) -> list[list[Completion]]:
        vllm = require_vllm()
        requests = self.requests(prompt_ids, params, seeds, n, stop_ids)
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids, _ in requests],
                                    [vllm.SamplingParams(**kw) for _, kw in requests], use_tqdm=False)
        completions = [self.to_completion(o.outputs[0], params) for o in outputs]
        return [completions[i * n:(i + 1) * n] for i in range(len(prompt_ids))]

    def to_completion(self, output, params: SamplingParams) -> Completion:
        """A vLLM CompletionOutput as a Completion: text decoded by codelm's byte-exact decoder (the same text the
        other backends give for the same tokens), cut at the first stop string."""
        token_ids = [t for t in output.token_ids if t not in self.eos_ids]
        text = self.tokenizer.decode(token_ids)
        cut = find_stop(text, params.stop)
        if cut >= 0:
            return Completion(text[:cut], token_ids, [], STOP, len(token_ids))
        reason = EOT if output.finish_reason == "stop" else LENGTH  # vLLM's words: "stop" = a stop token
        return Completion(text, token_ids, [], reason, len(token_ids))

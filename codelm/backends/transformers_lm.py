"""Any `AutoModelForCausalLM` architecture transformers ships (Llama, Phi, StarCoder2, GPT-BigCode, Qwen2, CodeGen,
GPT-NeoX, ...), decoded by codelm's own loop over the model's forward and KV cache.

Why not `model.generate()`: it samples the whole batch from torch's one global generator, so a sample would depend
on what else is in its batch. Here every row has its own `torch.Generator` (codelm.generate.make_generators and
sample_tokens), prompts are left-padded with an attention mask and per-row position ids, n samples share one prefill
(the cache is repeated n times), and finished rows leave the batch and the cache. A sample therefore depends only on
its seed, the same contract as the codelm backend.

Prompts get the model's own BOS handling: whatever the tokenizer's post-processor puts before a text (Llama and
DeepSeek-Coder a BOS, Qwen2.5-Coder and StarCoder nothing). Infilling uses the family FIM template codelm.prompts
knows (StarCoder, Code Llama, DeepSeek-Coder, Qwen2.5-Coder), chosen by the sentinel tokens the tokenizer has; the
prompt is built from the sentinel ids and the encoded text between them, which is the token sequence the family's
tokenizer gives for the template text (added tokens split the text), except that code which happens to contain a
sentinel's spelling stays text. A model without FIM tokens is refused in one line.

Out of memory, a batch is halved and retried (down to one prompt, then halves of its n samples); by the seed
contract the samples do not change.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Sequence

import torch

from codelm.errors import CheckpointError, ConfigError
from codelm.generate import (Completion, OnToken, RowState, SamplingParams, TextStream, expand_seeds, left_pad,
                             make_generators, sample_step)
from codelm.prompts import completion_prompt, family_fim_prompt, family_stop_ids, require_family_format
from codelm.terms import LENGTH

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def _require_transformers():
    try:
        import transformers
    except ImportError:
        raise ConfigError("the transformers backend needs the `transformers` package: pip install 'codelm[hf]'") \
            from None
    return transformers


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ConfigError(f"--device: unknown device {device!r} (auto, cpu, cuda, cuda:N)") from None


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto`: bfloat16 on a GPU that supports it, else float32 (CPUs compute bf16 matmuls slowly)."""
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype: unknown dtype {dtype!r} (auto, {', '.join(DTYPES)})")
    return DTYPES[dtype]


class HFPrompts:
    """What every Hugging Face-model backend shares: prompts as the model's tokenizer makes them (its BOS handling,
    its family's FIM template) and codelm's tokenizer interface over the same tokenizer.json for decoding."""

    def __init__(self, hf_tokenizer, model_config, *, name: str, extra_eos=None):
        from codelm.hf_tokenizer import HFTokenizer

        self.hf_tokenizer = hf_tokenizer
        self.name = name
        vocab = hf_tokenizer.get_vocab()
        eos = hf_tokenizer.eos_token_id
        eos_ids = {i for i in ([eos] + (extra_eos if isinstance(extra_eos, list) else [extra_eos])) if i is not None}
        if not eos_ids:
            raise ConfigError(f"{name}: the tokenizer defines no end-of-sequence token")
        # byte-exact incremental decoding for TextStream
        self.tokenizer = HFTokenizer(hf_tokenizer.backend_tokenizer.to_str(), name=name,
                                     bos_id=hf_tokenizer.bos_token_id, eos_id=eos if eos is not None else
                                     min(eos_ids), pad_id=hf_tokenizer.pad_token_id)
        self.eos_ids = frozenset(eos_ids)
        self.head = self.tokenizer.head  # the post-processor's BOS handling
        self.fim_family = self.tokenizer.fim_family
        self.vocab = self.tokenizer.vocab
        self.context_length = next((int(v) for v in (getattr(model_config, k, None) for k in
                                                     ("max_position_embeddings", "n_positions", "n_ctx",
                                                      "seq_length")) if isinstance(v, int) and v > 0), 1 << 20)
        self.n_vocab = max(self.tokenizer.n_vocab, 1)

    # --- prompts ------------------------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Text as ids, special-token spellings kept as text (as codelm does)."""
        return self.tokenizer.encode(text)

    def prompt_ids(self, prompt: str) -> list[int]:
        return completion_prompt(self.encode(prompt), self.context_length - 1, self.head).ids

    def require_fim(self, fim_format: str = "psm") -> str:
        return require_family_format(self.fim_family, fim_format, self.name)

    def fim_prompt_ids(self, prefix: str, suffix: str, fim_format: str = "psm") -> list[int]:
        """The family's template as ids (codelm.prompts.family_fim_prompt), trimmed to the context."""
        family = self.require_fim(fim_format)
        return family_fim_prompt(self.encode, self.vocab, self.head, family, prefix, suffix, self.context_length - 1,
                                 fim_format).ids

    def fim_stop_ids(self) -> frozenset[int]:
        return family_stop_ids(self.vocab, self.fim_family, self.eos_ids)

    # --- generation ---------------------------------------------------------------------------------------------
    def complete(self, prompts: Sequence[str], params: SamplingParams, seeds=None,
                 n: int = 1) -> list[list[Completion]]:
        return self.generate_ids([self.prompt_ids(p) for p in prompts], params, seeds, n)

    def infill(self, prefixes: Sequence[str], suffixes: Sequence[str], params: SamplingParams, seeds=None, n: int = 1,
               fim_format: str = "psm") -> list[list[Completion]]:
        self.require_fim(fim_format)
        ids = [self.fim_prompt_ids(p, s, fim_format) for p, s in zip(prefixes, suffixes)]
        return self.generate_ids(ids, params, seeds, n, stop_ids=self.fim_stop_ids())

    def generate_ids(self, prompt_ids, params, seeds=None, n=1, stop_ids=None) -> list[list[Completion]]:
        raise NotImplementedError  # each backend decodes its own way


class TransformersLM(HFPrompts):
    """A transformers causal LM with codelm's generation contract: `generate_ids`, `complete`, `infill`."""

    def __init__(self, model, hf_tokenizer, *, name: str = "transformers", max_batch: int | None = None):
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        super().__init__(hf_tokenizer, model.config, name=name, extra_eos=gen_eos)
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.max_batch = max_batch  # lowered for good after an out-of-memory retry
        # transformers 5 renamed the forward's past_key_values to cache (the old name warns)
        forward_args = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in forward_args else "past_key_values"
        self._keep_arg = next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in forward_args), None)

    # --- loading ------------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str = "auto", dtype: str = "auto",
             trust_remote_code: bool = False, max_batch: int | None = None) -> "TransformersLM":
        """A local Hugging Face model directory (never the network)."""
        transformers = _require_transformers()
        path = Path(path)
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{path}: not a Hugging Face model directory (no config.json)")
        dev = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, dev)
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True,
                                                                   trust_remote_code=trust_remote_code)
            model = transformers.AutoModelForCausalLM.from_pretrained(
                path, local_files_only=True, trust_remote_code=trust_remote_code, dtype=torch_dtype)
        except ValueError as e:  # an unknown architecture, or one that needs remote code
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            hint = "" if trust_remote_code else " (if the model ships its own code, add --trust-remote-code)"
            raise CheckpointError(f"{path}: transformers cannot load it: {first}{hint}") from None
        except OSError as e:
            raise CheckpointError(f"{path}: {str(e).strip().splitlines()[0]}") from None
        if not getattr(tokenizer, "is_fast", False):
            raise CheckpointError(f"{path}: only fast tokenizers (tokenizer.json, or convertible) are supported")
        return cls(model.to(dev), tokenizer, name=str(path), max_batch=max_batch)

    def describe(self) -> dict:
        import transformers
        return {"backend": "transformers", "architecture": type(self.model).__name__,
                "model_type": self.model.config.model_type, "dtype": str(self.dtype).removeprefix("torch."),
                "device": str(self.device), "fim_family": self.fim_family, "bos_head": self.head,
                "versions": {"torch": torch.__version__, "transformers": transformers.__version__}}

    def generate_ids(self, prompt_ids: Sequence[Sequence[int]], params: SamplingParams, seeds=None, n: int = 1,
                     stop_ids: frozenset[int] | None = None,
                     on_token: OnToken | None = None) -> list[list[Completion]]:
        """n completions of each token prompt. seeds as codelm.generate.generate_batch takes them (seeds[i] an int:
        sample j gets seeds[i] + j; or a list of n ints). Batches are at most max_batch prompts, halved on OOM.
        `on_token` streams as decode_batch's does (TokenEvent.prompt counts within the batch decoded; a batch
        retried after an out-of-memory error streams again from its start)."""
        if n < 1:
            raise ConfigError(f"n must be >= 1, got {n}")
        rows = expand_seeds(seeds, len(prompt_ids), n, params.seed)
        per_prompt = [rows[i * n:(i + 1) * n] for i in range(len(prompt_ids))]
        stop_ids = self.eos_ids if stop_ids is None else stop_ids
        out: list[list[Completion]] = []
        start = 0
        while start < len(prompt_ids):
            size = self.max_batch or len(prompt_ids)
            chunk = list(range(start, min(start + size, len(prompt_ids))))
            try:
                out += self._decode_oom_safe([prompt_ids[i] for i in chunk], [per_prompt[i] for i in chunk],
                                             params, stop_ids, on_token)
            except torch.OutOfMemoryError:
                if len(chunk) == 1:
                    raise
                self.max_batch = max(1, len(chunk) // 2)
                _free_memory(self.device)
                continue
            start += len(chunk)
        return out

    def _decode_oom_safe(self, prompts, seeds, params, stop_ids, on_token) -> list[list[Completion]]:
        try:
            return self._decode(prompts, seeds, params, stop_ids, on_token)
        except torch.OutOfMemoryError:
            if len(prompts) > 1 or len(seeds[0]) == 1:
                raise
            _free_memory(self.device)  # one prompt: halve its samples instead
            half = len(seeds[0]) // 2
            a = self._decode_oom_safe(prompts, [seeds[0][:half]], params, stop_ids, on_token)
            b = self._decode_oom_safe(prompts, [seeds[0][half:]], params, stop_ids, on_token)
            return [a[0] + b[0]]

    @torch.inference_mode()
    def _decode(self, prompts: list[list[int]], seeds: list[list[int | None]], params: SamplingParams,
                stop_ids: frozenset[int], on_token: OnToken | None = None) -> list[list[Completion]]:
        """codelm.generate.decode_batch's loop (its RowState and sample_step: the same sampling, stop and finish
        rules) over the transformers model's forward and DynamicCache."""
        from transformers import DynamicCache

        n = len(seeds[0])
        B, R = len(prompts), len(prompts) * n
        lengths = [len(p) for p in prompts]
        rows = [RowState(r // n, r % n, TextStream(self.tokenizer, params.stop),
                         min(params.max_new_tokens, self.context_length - lengths[r // n])) for r in range(R)]
        steps = max((row.budget for row in rows), default=0)
        if steps <= 0:
            return [[Completion("", [], [], LENGTH) for _ in range(n)] for _ in range(B)]
        ids, real, positions = left_pad(prompts, pad_id=self.tokenizer.pad_id or 0)
        dev = self.device
        mask = real.long().to(dev)
        try:
            cache = DynamicCache(config=self.model.config)
        except TypeError:  # transformers before 4.56
            cache = DynamicCache()
        logits = self._forward(ids.to(dev), mask, positions.to(dev), cache)
        if n > 1:  # one prefill for all samples of a prompt
            cache.batch_repeat_interleave(n)
            logits, mask = logits.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)
        next_pos = torch.tensor([lengths[r // n] for r in range(R)], device=dev)
        generators = make_generators([s for row in seeds for s in row], dev)
        alive = list(range(R))
        for step in range(steps):
            toks, still = sample_step(logits, params, self.n_vocab, rows, alive, generators, step, stop_ids, on_token)
            if not still:
                break
            if len(still) < len(alive):  # finished rows leave the batch and the cache
                keep = torch.tensor(still, device=dev)
                cache.batch_select_indices(keep)
                toks, next_pos, mask = toks[keep], next_pos[keep], mask[keep]
                alive = [alive[b] for b in still]
            mask = torch.cat([mask, mask.new_ones(len(alive), 1)], dim=1)
            logits = self._forward(toks.view(-1, 1), mask, next_pos.view(-1, 1), cache)
            next_pos = next_pos + 1
        return [[rows[r].completion() for r in range(i * n, (i + 1) * n)] for i in range(B)]

    def _forward(self, ids, mask, positions, cache) -> torch.Tensor:
        """Next-token logits [B, V] (float32) after `ids`, appending to the cache. Only the last position goes
        through the output head."""
        extra = {self._cache_arg: cache, **({self._keep_arg: 1} if self._keep_arg else {})}
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **extra)
        return out.logits[:, -1].float()


def _free_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()

"""Compiled decoding, gpt-fast's way: a static KV cache and decoding passes compiled for a few bucketed shapes.

`compile_decoding(model)` turns a built model's cached passes into compiled ones without changing what callers
write: `codelm.generate`, `codelm.infill` and the server's worker keep calling `model(...)` and the cache methods.
What changes underneath:

- **The cache is static.** Its capacity is a power of two (128, 256, ...: what the caller asks for, rounded up;
  one spare slot past it keeps dynamo from specialising a pass that fills it, see `setup_cache`) and its rows
  are padded up to a bucket (1, 2, 4, 8, 16, ...): rows past the caller's are copies of its last row, computed
  and ignored. Every pass writes its keys at tensor slots and attends over the cache's first S slots
  through a mask (`Transformer.forward_static`), so a step reads no Python-side length: one traced step serves
  every position (on CPU S, the filled part, is a dynamic size; on GPU it is the whole cache, gpt-fast's way,
  since a CUDA graph is recorded per shape).
- **Passes are bucketed.** A pass of T tokens runs as the next bucket (1: a decoding step; up to 8: a prompt-lookup
  draft being verified, a MIM candidate; 16, 32, ...: a prefill), right-padded with dummy tokens written past the
  real ones: causality keeps real tokens from seeing them and the next pass overwrites their slots.
- **Each (rows, tokens, capacity, hidden-or-logits) bucket is one graph**, compiled the first time it is met
  (`torch.compile(fullgraph=True, dynamic=False)`: a graph break is an error, not a silent eager fallback). On CPU
  inductor writes C++ for everything between the matmuls; the matmuls stay on the packed weights of
  codelm/fast_paths.py where it applies them (an opaque custom op), and on GPU the step can be a CUDA graph.

A pass that fits no bucket (a prefill longer than the room left in the cache) runs eagerly on the same cache.
Compiling costs tens of seconds per bucket on a small CPU, so `--compile auto` (`use_compile`) turns it on there
only where the tokens to decode repay that (see CPU_REPAYS_AFTER_TOKENS for the measurements). GPU decoding
(CUDA graphs through mode="reduce-overhead") is written but was not run here: no GPU was available.
"""

from __future__ import annotations

import types

import torch

from codelm.model import Transformer
from codelm.terms import COMPILE_SETTINGS

ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
DRAFT_BUCKET = 8        # verification passes (a token plus a prompt-lookup draft, a MIM candidate) up to 8 tokens
MIN_PREFILL_BUCKET = 16
MIN_CAPACITY = 128


def row_bucket(n: int) -> int:
    for b in ROW_BUCKETS:
        if n <= b:
            return b
    return -(-n // ROW_BUCKETS[-1]) * ROW_BUCKETS[-1]


def capacity_bucket(slots: int) -> int:
    """Cache capacities are powers of two: every step attends over the whole cache, so a cache sized far past
    what a decode needs costs attention time (over 512 slots it was a fifth of a tiny model's step), while each
    capacity is one more set of graphs."""
    capacity = MIN_CAPACITY
    while capacity < slots:
        capacity *= 2
    return capacity


def token_bucket(T: int) -> int:
    if T == 1:
        return 1
    if T <= DRAFT_BUCKET:
        return DRAFT_BUCKET
    b = MIN_PREFILL_BUCKET
    while b < T:
        b *= 2
    return b


class CompiledTransformer(Transformer):
    """A Transformer whose cached passes run compiled over a static cache (the class `compile_decoding` gives a
    built model, in place, as codelm/fast_paths.py swaps its layers' classes)."""
    _steps: "_CompiledSteps"

    def setup_cache(self, batch: int, max_len: int | None = None, dtype=None) -> None:
        """The static cache: rows padded to a bucket, capacity a power of two (at least MIN_CAPACITY), plus one
        spare slot that no pass writes or sees: a pass's number of keys (a dynamic size, at most the capacity)
        then never equals the cache's length, which dynamo would otherwise specialise on (a pass that filled
        the cache exactly compiled a graph of its own, an error under mark_dynamic)."""
        super().setup_cache(row_bucket(batch), capacity_bucket(max_len or self.config.context_length) + 1, dtype)

    @property
    def cache_capacity(self) -> int:
        return super().cache_capacity - 1 if self.has_cache else 0

    def select_cache_rows(self, rows: torch.Tensor) -> None:
        pad = row_bucket(rows.numel()) - rows.numel()
        if pad:
            rows = torch.cat([rows, rows[-1:].expand(pad)])
        super().select_cache_rows(rows)

    def forward(self, idx: torch.Tensor, positions: torch.Tensor | None = None,
                key_padding: torch.Tensor | None = None, return_hidden: bool = False) -> torch.Tensor:
        if not self.has_cache or torch.is_grad_enabled() or self.training:
            return super().forward(idx, positions, key_padding, return_hidden)
        B, T = idx.shape
        rows, capacity, start = self.layers[0].attn.cache.k.shape[0], self.cache_capacity, self.cache_length
        if rows < B:
            raise ValueError(f"a pass of {B} rows on a cache of {rows}")
        if positions is None:
            positions = torch.arange(start, start + T, device=idx.device)
        if positions.dim() == 1:
            positions = positions.unsqueeze(0).expand(B, T)
        Tb = token_bucket(T)
        if start + Tb > capacity:  # no bucket fits the room left: this pass runs eagerly on the same cache
            Tb = T
            if start + T > capacity:
                raise ValueError(f"a pass of {T} tokens after {start} does not fit the cache's {capacity} slots")
        self._check_positions(positions)
        ids = torch.zeros(rows, Tb, dtype=idx.dtype, device=idx.device)
        ids[:B, :T] = idx
        pos = torch.zeros(rows, Tb, dtype=positions.dtype, device=idx.device)
        pos[:B, :T] = positions
        # the slots this pass sees (2 at least: dynamo specialises sizes 0 and 1). A CUDA graph is recorded per
        # shape, so on GPU every pass sees the whole cache (gpt-fast's way); on CPU attention then costs the
        # capacity instead of the filled part, so there the number is the filled part, a dynamic size.
        cuda = idx.device.type == "cuda"
        n_keys = capacity if cuda else max(start + Tb, 2)
        keys = torch.ones(rows, n_keys, dtype=torch.bool, device=idx.device)
        if key_padding is not None:
            keys[:B, :start + T] = key_padding[:, :start + T]
        slots = torch.arange(start, start + Tb, device=idx.device)
        if Tb == token_bucket(T):
            out = self._steps.run(ids, pos, slots, keys, return_hidden, dynamic_keys=not cuda)
        else:
            out = self.forward_static(ids, pos, slots, keys, return_hidden)
        self.set_cache_length(start + T)
        return out[:B, :T]


class _CompiledSteps:
    """The model's compiled step: one torch.compile'd `forward_static`, a graph per bucket, kept apart from the
    module state so that copying the model (deepcopy, pickling) copies none of it: a copy compiles its own."""

    def __init__(self, model: CompiledTransformer, mode: str | None):
        self.model, self.mode = model, mode
        self.fns = {}

    def run(self, ids, positions, slots, keys, return_hidden: bool, dynamic_keys: bool = True) -> torch.Tensor:
        # the cache's capacity is a module buffer's shape, which the skipped module guards would not check
        weight = self.model.embed.weight
        key = (weight.dtype, weight.device, self.model.cache_capacity)
        fn = self.fns.get(key)
        if fn is None:
            fn = self.fns[key] = self._compile()
        # one graph for every number of keys a pass sees, the whole capacity included (see setup_cache; "maybe":
        # should dynamo still specialise on some size, that costs a graph, never a failed decode)
        if dynamic_keys:
            torch._dynamo.maybe_mark_dynamic(keys, 1)
        return fn(self.model, ids, positions, slots, keys, return_hidden)

    def _compile(self):
        """A private copy of forward_static's code for this model and dtype, compiled. Dynamo keeps its graphs per
        code object, so no other model's graphs can serve this one; that is what makes it safe to skip dynamo's
        guards on the modules' attributes (checking ~100 parameters cost ~0.3 ms per step, a tenth of a tiny
        model's step): what the graphs depend on is in the guarded inputs (the pass's rows, which are the cache's,
        and tokens) or in the key of `fns` (dtype, device, cache capacity)."""
        code = Transformer.forward_static.__code__
        fn = types.FunctionType(code.replace(), Transformer.forward_static.__globals__, "forward_static",
                                Transformer.forward_static.__defaults__)
        return torch.compile(fn, fullgraph=True, dynamic=False, mode=self.mode,
                             options={"guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe})

    def __deepcopy__(self, memo):
        return _CompiledSteps(memo.get(id(self.model), self.model), self.mode)

    def __getstate__(self):
        return {"model": self.model, "mode": self.mode, "fns": {}}


def compile_decoding(model: Transformer) -> Transformer:
    """Give a built model compiled decoding (idempotent; see the module docstring); returns the model."""
    if isinstance(model, CompiledTransformer):
        return model
    if model.has_cache:
        model.clear_cache()
    model.__class__ = CompiledTransformer
    # a graph per bucket and per model: more than dynamo's default of 8 per function before it gives up on one
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 256)
    mode = "reduce-overhead" if model.embed.weight.device.type == "cuda" else None  # CUDA graphs on GPU
    model._steps = _CompiledSteps(model, mode)
    return model


def uncompiled(model: Transformer) -> Transformer:
    """The model back with eager decoding (the class swap undone); returns the model."""
    if isinstance(model, CompiledTransformer):
        if model.has_cache:
            model.clear_cache()
        model.__class__ = Transformer
        del model._steps
    return model


# On CPU compiling repays itself only over a long decode: measured under load (2 shared cores, load ~12, tiny preset,
# benchmarks/bench_generate.py), compiled steps took 0.70x eager's CPU time at batch 1 (one token per pass) and
# 0.88x at batch 8, after 40-110 s of compiling a batch size's buckets: ~0.4-1 ms saved per token, so on the order
# of 10^5 tokens to break even. An evaluation plans tasks x samples x max_new_tokens; one `sample` or `infill`
# never comes near, nor does a CPU server (each new bucket would stall the requests waiting on it).
CPU_REPAYS_AFTER_TOKENS = 100_000


def use_compile(setting: str, model: Transformer, planned_tokens: int = 0) -> bool:
    """Resolve a `--compile` setting for a model that will decode up to `planned_tokens` tokens. auto: on for a
    CUDA model (gpt-fast's setting: there a step is mostly launch overhead, which a compiled step removes); on CPU
    only when planned_tokens reaches CPU_REPAYS_AFTER_TOKENS (above)."""
    if setting not in COMPILE_SETTINGS:
        from codelm.errors import ConfigError
        raise ConfigError(f"--compile {setting!r}: choose one of {', '.join(COMPILE_SETTINGS)}")
    if setting == "auto":
        return model.embed.weight.device.type == "cuda" or planned_tokens >= CPU_REPAYS_AFTER_TOKENS
    return setting == "on"


def apply_compile_setting(model: Transformer, setting: str, planned_tokens: int = 0) -> Transformer:
    """The model with compiled decoding if `setting` (on/off/auto, see use_compile) says so; returns the model."""
    return compile_decoding(model) if use_compile(setting, model, planned_tokens) else model

"""CPU fast paths, kept out of the model file and applied to a built model by one function, `apply_fast_paths`
(as gpt-fast keeps quantization and torchtitan keeps parallelisms outside the model). Each replaces a step of
`codelm.model` with a faster one that computes the same thing, on the hardware where it pays:

- fp32 inference on CPU: projections through oneDNN with each weight packed once (q/k/v and gate/up side by side);
- bf16 training on CPU: causal attention as explicit matmuls instead of SDPA's flash kernel;
- process-wide: glibc's malloc keeps freed memory (`keep_freed_memory_mapped`), and `cpu_has_bf16` tells whether
  bf16 runs natively.

The swap changes classes in place (a module keeps its parameters, names and state-dict keys), so a model with fast
paths saves, loads, copies and exports exactly as the plain one.
"""

from __future__ import annotations

import itertools
import weakref
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from codelm.model import Attention, SwiGLU, Transformer, apply_rotary


def apply_fast_paths(model: Transformer) -> Transformer:
    """Give a built model the CPU fast paths below (idempotent); returns the model."""
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = PackedLinear
            module.packed = PackedWeights()
        elif type(module) is Attention:
            module.__class__ = FastAttention
            module.qkv_packed = PackedWeights()
        elif type(module) is SwiGLU:
            module.__class__ = FastSwiGLU
            module.gate_up_packed = PackedWeights()
    return model


# ----------------------------------------------------------------------------------------------------------------
# Inference on CPU: projections through oneDNN with weights packed once
# ----------------------------------------------------------------------------------------------------------------
# F.linear runs on MKL, which on these machines (AMD EPYC) picks its AVX2 kernels; oneDNN's kernels, with each weight
# packed once into their layout, are 1.5-1.8x faster at 1-4 rows (a decoding step) and 2.2-2.5x at 8-4096 rows
# (prefill, scoring), measured. fp32 inference only (no autograd through these ops; bf16 already goes to oneDNN).
# Where oneDNN is missing, a contiguous [in, out] copy still beats F.linear on few rows (x @ W_t streams the weights
# at ~30 GB/s, MKL's gemv on [out, in] at ~15). Projections that read the same input (q/k/v, gate/up) are packed
# side by side: one matmul instead of three. A packed copy costs as many bytes as its weights; it is made on first
# use and remade whenever a weight changes (an optimizer step, loading a checkpoint, a move to another dtype/device).
FEW_ROWS = 32
ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def use_packed_weights(x: torch.Tensor, linear: nn.Linear) -> bool:
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()
            and (ONEDNN or x.numel() <= FEW_ROWS * x.shape[-1])
            # not in a DDP/FSDP run: FSDP gathers weights into reused buffers, where a packed copy could go stale
            and not (torch.distributed.is_available() and torch.distributed.is_initialized()))


class PackedWeights:
    """Some linears' weights (and biases) side by side, packed for inference, kept while they are unchanged."""

    def __init__(self):
        self.key = None
        self.weight = self.bias = None
        self.handle = _register(self)

    def matmul(self, x: torch.Tensor, *linears: nn.Linear) -> torch.Tensor:
        if torch.compiler.is_compiling():  # inside a compiled step: one opaque call, packed as in eager
            return torch.ops.codelm.packed_linear(x, [m.weight for m in linears], [m.bias for m in linears],
                                                  self.handle)
        return self._matmul(x, [m.weight for m in linears], [m.bias for m in linears])

    def _matmul(self, x: torch.Tensor, weights: list[torch.Tensor], biases: list) -> torch.Tensor:
        key = tuple((w.data_ptr(), w._version, w.dtype) for w in weights)
        if key != self.key:
            has_bias = biases[0] is not None
            self.bias = torch.cat([b.detach() for b in biases]) if has_bias else None
            self.weight = self._pack(torch.cat([w.detach() for w in weights]))
            self.key = key
        if self.weight.is_mkldnn:
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        y = x @ self.weight
        return y if self.bias is None else y + self.bias

    @staticmethod
    def _pack(weight: torch.Tensor) -> torch.Tensor:
        global ONEDNN
        if ONEDNN:
            try:
                return torch.ops.mkldnn._reorder_linear_weight(weight, FEW_ROWS)
            except (RuntimeError, NotImplementedError):  # a build or CPU without these kernels: the fallback below
                ONEDNN = False
        return weight.t().contiguous()

    def __deepcopy__(self, memo):  # a copied model packs its own (oneDNN's packed tensors cannot be copied)
        return PackedWeights()

    def __getstate__(self):
        return {"key": None, "weight": None, "bias": None, "handle": None}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.handle = _register(self)


# A compiled graph cannot hold a Python object, so a compiled step names its PackedWeights by a number: the graph
# calls the custom op below, which runs the packed matmul eagerly (inductor fuses everything around it).
_PACKED: "weakref.WeakValueDictionary[int, PackedWeights]" = weakref.WeakValueDictionary()
_next_handle = itertools.count()


def _register(packed: PackedWeights) -> int:
    handle = next(_next_handle)
    _PACKED[handle] = packed
    return handle


@torch.library.custom_op("codelm::packed_linear", mutates_args=())
def packed_linear(x: torch.Tensor, weights: list[torch.Tensor], biases: list[Optional[torch.Tensor]],
                  handle: int) -> torch.Tensor:
    """x @ cat(weights).T (+ cat(biases)) on the packed copy kept by PackedWeights `handle`."""
    return _PACKED[handle]._matmul(x, weights, biases)


@packed_linear.register_fake
def _(x, weights, biases, handle):
    return x.new_empty(*x.shape[:-1], sum(w.shape[0] for w in weights))


class PackedLinear(nn.Linear):
    """nn.Linear whose fp32 inference on CPU runs on a packed copy of the weight (see above)."""
    packed: PackedWeights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if use_packed_weights(x, self):
            return self.packed.matmul(x, self)
        return F.linear(x, self.weight, self.bias)


class FastAttention(Attention):
    """Attention with q/k/v in one packed matmul for CPU inference and explicit causal attention for bf16 training."""
    qkv_packed: PackedWeights

    def project(self, x, cos, sin):
        if not use_packed_weights(x, self.wq):
            return super().project(x, cos, sin)
        B, T, _ = x.shape
        H, Hkv, D = self.n_head, self.n_kv_head, self.head_dim
        qkv = self.qkv_packed.matmul(x, self.wq, self.wk, self.wv).view(B, T, H + 2 * Hkv, D).transpose(1, 2)
        qk = apply_rotary(qkv[:, :H + Hkv], cos, sin) if cos is not None else qkv[:, :H + Hkv]  # rotated together
        return qk[:, :H], qk[:, H:], qkv[:, H + Hkv:]

    def attend(self, q, k, v, mask):
        if self.cache is None and use_explicit_attention(q) and (mask is None or mask.dtype == torch.bool):
            return causal_attention_explicit(q, k, v, self.scale, mask)  # bf16 on CPU: faster than SDPA
        if mask is not None and q.shape[2] <= FEW_QUERIES and torch.compiler.is_compiling():
            return few_query_attention(q, k, v, mask, self.scale)
        return super().attend(q, k, v, mask)


class FastSwiGLU(SwiGLU):
    """SwiGLU with gate and up in one packed matmul for CPU inference."""
    gate_up_packed: PackedWeights

    def forward(self, x):
        if use_packed_weights(x, self.w_gate):
            gate, up = self.gate_up_packed.matmul(x, self.w_gate, self.w_up).chunk(2, dim=-1)
            return self.w_down(F.silu(gate) * up)
        return super().forward(x)


# A compiled decoding step (codelm/compiled.py) attends over the whole static cache with a mask. SDPA's CPU flash
# kernel takes ~100 us for one query over 256 keys (its blocks are sized for long queries); written as products and
# sums, inductor makes it two fused loops over the keys, which cost a few us.
FEW_QUERIES = 16


def few_query_attention(q, k, v, mask, scale: float | None) -> torch.Tensor:
    """q [B, H, T, D] (T small), k/v [B, H, S, D], mask bool or float [B, 1|H, T, S] -> [B, H, T, D]."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q @ k.transpose(-1, -2)) * scale  # [B, H, T, S]
    scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    probs = torch.softmax(scores.float(), dim=-1).to(v.dtype)
    return probs @ v


# ----------------------------------------------------------------------------------------------------------------
# Training in bf16 on CPU: explicit causal attention
# ----------------------------------------------------------------------------------------------------------------
EXPLICIT_ATTENTION_MAX_T = 1024  # bf16 on CPU up to this context: explicit attention beats SDPA's flash kernel
SCORE_CHUNK_ELEMENTS = 1 << 21  # attention scores per group of heads: a few MB, which stay in cache


def use_explicit_attention(q: torch.Tensor) -> bool:
    return q.device.type == "cpu" and q.dtype == torch.bfloat16 and q.shape[2] <= EXPLICIT_ATTENTION_MAX_T


def causal_attention_explicit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None,
                              allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Causal attention as baddbmm (scale and causal mask fused into the score matmul), softmax, bmm, a cache-sized
    group of heads at a time. Why: on CPU in bf16 SDPA's flash kernel is slow, its backward above all; this is
    1.5-3x faster forward + backward at contexts 128-1024 (benchmarks/bench_train.py --ablate). In fp32 they tie,
    so fp32 keeps SDPA, as do masked passes and decoding with a KV cache.
    Trade-offs: scores are rounded to bf16 before the softmax (fp32 inside the kernel), as in nanoGPT's non-flash
    path and Hugging Face's eager attention, where flash keeps them in fp32; and autograd keeps each layer's
    probabilities (B * H * T^2 bf16) for the backward pass, which flash recomputes.
    `allowed` [B, 1, T, T] bool replaces the causal mask (document-aware packing's block-causal mask): 1.5x faster
    than SDPA with that mask, forward + backward at 16 x 4 heads x 256 (bf16, under load)."""
    B, H, T, D = q.shape
    scale = D ** -0.5 if scale is None else scale
    if allowed is None:
        bias = torch.zeros(T, T, dtype=q.dtype, device=q.device).masked_fill_(
            torch.ones(T, T, dtype=torch.bool, device=q.device).triu_(1), float("-inf"))
    else:  # one additive mask per sequence; each group of heads takes its sequences' rows
        bias = torch.zeros(allowed.shape[0], T, T, dtype=q.dtype, device=q.device).masked_fill_(
            ~allowed[:, 0], float("-inf"))
    q, k, v = (t.reshape(B * H, T, D) for t in (q, k, v))
    heads = max(1, SCORE_CHUNK_ELEMENTS // (T * T))
    out = []
    for i in range(0, B * H, heads):
        mask = bias if allowed is None else bias[torch.arange(i, min(i + heads, B * H), device=q.device) // H]
        scores = torch.baddbmm(mask, q[i:i + heads], k[i:i + heads].transpose(1, 2), alpha=scale)
        out.append(torch.softmax(scores, dim=-1) @ v[i:i + heads])
    return torch.cat(out).view(B, H, T, D)


# ----------------------------------------------------------------------------------------------------------------
# Process-wide settings and probes
# ----------------------------------------------------------------------------------------------------------------
def keep_freed_memory_mapped() -> None:
    """Have glibc's malloc keep freed memory for reuse instead of returning it to the OS. By default every block over
    32 MB (the [tokens, vocab] logits and their gradient) is mmapped and unmapped again, so each step page-faults it back
    in, zeroed by the kernel: 10-20% of a bf16 CPU step at the tiny/small presets (benchmarks/bench_train.py --ablate).
    Serving all blocks from the never-trimmed heap lets each step reuse the last one's memory; resident memory stays at
    its peak, as with a GPU's caching allocator. Process-wide and for good (--keep-freed-memory false before the first
    Trainer to opt out); skipped when MALLOC_* variables already tune malloc, and off glibc."""
    import ctypes
    import os

    if any(k.startswith("MALLOC_") for k in os.environ):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # <malloc.h>
    mallopt(M_MMAP_MAX, 0)
    mallopt(M_TRIM_THRESHOLD, 2**31 - 1)


def cpu_has_bf16() -> bool:
    """AVX512-BF16 or AMX: PyTorch's CPU autocast then runs bf16 matmuls natively (2-4x fp32); elsewhere bf16
    is emulated and slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags

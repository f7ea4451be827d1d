"""The codelm decoder: a Llama-family transformer in one file, read top to bottom.

References: nanoGPT and gpt-fast (structure, KV cache), Llama (RMSNorm, rotary positions, SwiGLU, no biases),
Gopher (RMSNorm), BTLM-3B-8K (SwiGLU), MIM (arXiv 2303.07295: multi-query attention at 350M-2.7B).
The default block is chosen so that a checkpoint maps one-to-one onto Hugging Face's Llama format.

    RMSNorm -> attention (rotary, grouped/multi-query, SDPA) -> RMSNorm -> SwiGLU MLP, pre-norm residuals

Options from the seed papers, each one config field (defaults are the Llama block above):
    norm="layernorm", mlp="gelu", position="learned", bias=True   GPT-2 family
    position="alibi"                                              ALiBi (Press et al. 2021; BTLM-3B-8K)
    n_kv_head=1 / n_head > n_kv_head > 1                          multi-query (MIM paper) / grouped-query attention
    mup=True                                                      µP (Yang et al. 2022, as in Cerebras-GPT and BTLM):
        width multiplier m = d_model / mup_base_width; hidden weights init std/sqrt(m) and LR/m (optimizer_groups),
        embeddings x mup_embedding_mult, logits x mup_output_mult / m, attention scores q.k/d instead of /sqrt(d).
The Llama block (with GQA/MQA, biases, tied or untied embeddings, µP folded in) exports to Hugging Face's Llama
format with identical logits; the GPT-2 options and ALiBi do not (codelm/hf.py says why).

Incremental decoding uses a preallocated KV cache; `forward` takes explicit positions and an optional key-padding
mask so that left-padded batches (many prompts at once) and both reading directions use the same code. The model
owns the cache: callers go through its cache methods (set up, truncate, select rows, install rows).
Faster CPU kernels for the same computation live in codelm/fast_paths.py, applied to a built model by the loaders.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F


# ----------------------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class ModelConfig:
    vocab_size: int = 16448          # embedding rows: tokenizer n_vocab padded up to a multiple of 64
    context_length: int = 256        # longest sequence the rotary cache and KV cache are sized for
    n_layer: int = 6
    n_head: int = 4
    n_kv_head: int = 0               # 0 = n_head (multi-head); 1 = multi-query (MIM paper); else grouped-query
    d_model: int = 256
    ffn_hidden: int = 0              # 0 = Llama's rule: 8/3 * d_model rounded up to ffn_multiple_of
    ffn_multiple_of: int = 64
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True      # small vocab models save a lot of parameters by tying
    init_std: float = 0.02
    tokenizer: str = "cl100k_base:16384"  # the vocabulary this model is meant for (vocab_size follows from it)
    # architecture options; a checkpoint config written before they existed loads with these defaults
    norm: str = "rmsnorm"            # "rmsnorm" (Llama, Gopher) or "layernorm" (GPT-2)
    mlp: str = "swiglu"              # "swiglu" (Llama, BTLM) or "gelu" (GPT-2: 4x wide, tanh-approximate GELU)
    position: str = "rope"           # "rope" (Llama), "alibi" (BTLM; no position limit in the weights), "learned"
    bias: bool = False               # biases in every linear layer and LayerNorm (GPT-2); HF Llama's *_bias flags
    mup: bool = False                # µP: hyperparameters tuned at mup_base_width transfer to wider models
    mup_base_width: int = 256        # BTLM tuned its proxy models at d_model 256
    mup_embedding_mult: float = 1.0  # BTLM used 14.6 (tuned on its proxy); 1.0 = no change from SP at base width
    mup_output_mult: float = 1.0     # BTLM used 2.22; logits are multiplied by mup_output_mult / width_mult
    rope_scaling: float = 1.0        # linear RoPE scaling (positions / factor), as DeepSeek-Coder's config sets
    qkv_bias: bool = False           # biases on q/k/v only (Qwen2); `bias` puts them everywhere

    def __post_init__(self):
        if self.n_kv_head == 0:
            self.n_kv_head = self.n_head
        for name, allowed in (("norm", ("rmsnorm", "layernorm")), ("mlp", ("swiglu", "gelu")),
                              ("position", ("rope", "alibi", "learned"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}: choose one of {', '.join(allowed)}")
        if self.ffn_hidden == 0:
            # SwiGLU has three matrices, so Llama shrinks it to 8/3 d to cost what GPT-2's 4 d two-matrix MLP costs
            hidden = 4 * self.d_model if self.mlp == "gelu" else int(8 * self.d_model / 3)
            self.ffn_hidden = -(-hidden // self.ffn_multiple_of) * self.ffn_multiple_of
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head={self.n_head} is not divisible by n_kv_head={self.n_kv_head}")
        if self.position == "rope" and self.head_dim % 2:
            raise ValueError(f"rotary positions need an even head_dim, got {self.head_dim}")
        if self.rope_scaling <= 0:
            raise ValueError(f"rope_scaling={self.rope_scaling} must be positive")
        if self.mup_base_width <= 0:
            raise ValueError(f"mup_base_width={self.mup_base_width} must be positive")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def width_mult(self) -> float:
        """µP's width multiplier m (1.0 when µP is off, so every µP factor below becomes a no-op)."""
        return self.d_model / self.mup_base_width if self.mup else 1.0

    @property
    def is_llama(self) -> bool:
        """True when the block maps onto Hugging Face's Llama architecture (see codelm/hf.py)."""
        return (self.norm, self.mlp, self.position) == ("rmsnorm", "swiglu", "rope")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config fields: {sorted(unknown)}")
        return cls(**d)


# Named presets. CPU presets use a truncated vocabulary (ARCHITECTURE.md, Tokenizer); the paper presets the full
# cl100k one.
PRESETS: dict[str, dict] = {
    "tiny": dict(n_layer=6, n_head=4, d_model=256, context_length=256, tokenizer="cl100k_base:16384"),
    "small": dict(n_layer=10, n_head=8, d_model=512, context_length=512, tokenizer="cl100k_base:32768"),
    # MIM paper sizes (Table 1): multi-query attention, context 2048, full vocabulary
    "350m": dict(n_layer=24, n_head=16, n_kv_head=1, d_model=1024, context_length=2048, tokenizer="cl100k_base",
                 tie_embeddings=False),
    "1.3b": dict(n_layer=24, n_head=16, n_kv_head=1, d_model=2048, context_length=2048, tokenizer="cl100k_base",
                 tie_embeddings=False),
    "2.7b": dict(n_layer=32, n_head=32, n_kv_head=1, d_model=2560, context_length=2048, tokenizer="cl100k_base",
                 tie_embeddings=False),
}


def preset_config(name: str, **overrides) -> ModelConfig:
    """A preset's config with its vocabulary size derived from its tokenizer."""
    from codelm.errors import ConfigError
    from codelm.tokenizer import get_tokenizer, padded_vocab_size

    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    values = {**PRESETS[name], **overrides}
    if "vocab_size" not in overrides:
        values["vocab_size"] = padded_vocab_size(get_tokenizer(values["tokenizer"]).n_vocab)
    return ModelConfig(**values)


# ----------------------------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # computed in fp32 for stability under bf16 autocast, as Llama does
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "layernorm":  # GPT-2; its bias follows cfg.bias as in nanoGPT
        return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)
    return RMSNorm(cfg.d_model, cfg.norm_eps)


def rotary_tables(head_dim: int, length: int, theta: float, scaling: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [length, head_dim] in HF Llama's "rotate half" layout, so weights port without permutation.
    `scaling` is linear position interpolation: every angle divided by the factor (HF's rope_type "linear")."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)) / scaling
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
    emb = torch.cat([angles, angles], dim=-1)
    return emb.cos(), emb.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, D]; cos/sin [B, 1, T, D] gathered at each token's position."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x.float() * cos + rotated.float() * sin).type_as(x)


def alibi_slopes(n_head: int) -> torch.Tensor:
    """ALiBi's per-head slopes (Press et al. 2021): the geometric sequence 2^(-8/n), 2^(-16/n), ...; for a head count
    that is not a power of two, the paper's recipe takes the closest power and interleaves the next one's slopes."""
    def geometric(n):
        return [2 ** (-8 * (i + 1) / n) for i in range(n)]
    closest = 2 ** math.floor(math.log2(n_head))
    slopes = geometric(closest) + geometric(2 * closest)[0::2][: n_head - closest]
    return torch.tensor(slopes, dtype=torch.float32)


class KVCache(nn.Module):
    """Preallocated keys/values for one layer (gpt-fast's shape). The model owns it: only `Transformer`'s cache
    methods create, trim or reorder it; how many slots are filled is the model's `cache_length`."""

    def __init__(self, batch: int, n_kv_head: int, max_len: int, head_dim: int, dtype, device):
        super().__init__()
        shape = (batch, n_kv_head, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               n_keys: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k/v [B, Hkv, T, D] at cache slots [T] (a tensor, as gpt-fast's input_pos, so that a compiled step
        does not specialise on it); returns the first n_keys slots, the keys this pass attends to."""
        self.k.index_copy_(2, slots, k)
        self.v.index_copy_(2, slots, v)
        return self.k[:, :, :n_keys], self.v[:, :, :n_keys]

    def select_rows(self, rows: torch.Tensor) -> None:
        self.k = self.k.index_select(0, rows)
        self.v = self.v.index_select(0, rows)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        qkv_bias = cfg.bias or cfg.qkv_bias
        self.wq = nn.Linear(cfg.d_model, cfg.n_head * cfg.head_dim, bias=qkv_bias)
        self.wk = nn.Linear(cfg.d_model, cfg.n_kv_head * cfg.head_dim, bias=qkv_bias)
        self.wv = nn.Linear(cfg.d_model, cfg.n_kv_head * cfg.head_dim, bias=qkv_bias)
        self.wo = nn.Linear(cfg.n_head * cfg.head_dim, cfg.d_model, bias=cfg.bias)
        # µP scores q.k/d: q and k become correlated as training aligns them, so their dot product grows like d,
        # not sqrt(d) (Yang et al. 2022, section 4). None = SDPA's default 1/sqrt(d).
        self.scale = 1.0 / cfg.head_dim if cfg.mup else None
        self.cache: KVCache | None = None

    def forward(self, x, cos, sin, mask, cache_slots: torch.Tensor | None, n_keys: int):
        """cos/sin: rotary tables at each token's position, or None (ALiBi / learned positions).
        mask: None (plain causal), a bool mask, or a float bias with -inf where masked (ALiBi).
        cache_slots: where this pass's keys/values go in the KV cache; n_keys: how many cached keys it sees."""
        B, T, _ = x.shape
        q, k, v = self.project(x, cos, sin)
        if self.cache is not None:
            k, v = self.cache.update(cache_slots, k, v, n_keys)
        if self.n_kv_head != self.n_head:  # expand shared K/V heads (grouped/multi-query attention)
            k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
            v = v.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
        y = self.attend(q, k, v, mask)
        return self.wo(y.transpose(1, 2).reshape(B, T, -1))

    def project(self, x, cos, sin) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q [B, H, T, D], k and v [B, Hkv, T, D], q and k rotated."""
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        if cos is not None:
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        return q, k, v

    def attend(self, q, k, v, mask) -> torch.Tensor:
        if mask is None:  # plain causal pass (or one decoding step, which sees all its keys): SDPA's fused kernel
            return F.scaled_dot_product_attention(q, k, v, is_causal=q.shape[2] > 1, scale=self.scale)
        if mask.is_floating_point():
            mask = mask.to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.w_gate = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=cfg.bias)
        self.w_up = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=cfg.bias)
        self.w_down = nn.Linear(cfg.ffn_hidden, cfg.d_model, bias=cfg.bias)

    def forward(self, x):
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class GeluMLP(nn.Module):
    """GPT-2's MLP: up-projection, tanh-approximate GELU (GPT-2's `gelu_new`), down-projection."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.w_up = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=cfg.bias)
        self.w_down = nn.Linear(cfg.ffn_hidden, cfg.d_model, bias=cfg.bias)

    def forward(self, x):
        return self.w_down(F.gelu(self.w_up(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = make_norm(cfg)
        self.attn = Attention(cfg)
        self.mlp_norm = make_norm(cfg)
        self.mlp = GeluMLP(cfg) if cfg.mlp == "gelu" else SwiGLU(cfg)

    def forward(self, x, cos, sin, mask, cache_slots: torch.Tensor | None, n_keys: int):
        x = x + self.attn(self.attn_norm(x), cos, sin, mask, cache_slots, n_keys)
        return x + self.mlp(self.mlp_norm(x))


# ----------------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------------
class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        if cfg.position == "learned":  # GPT-2: one learned vector per position, added to the token embedding
            self.pos_embed = nn.Embedding(cfg.context_length, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = make_norm(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.tie_weights()
        if cfg.position == "rope":
            cos, sin = rotary_tables(cfg.head_dim, cfg.context_length, cfg.rope_theta, cfg.rope_scaling)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        if cfg.position == "alibi":
            self.register_buffer("alibi_slopes", alibi_slopes(cfg.n_head), persistent=False)
        self._cache_length = 0  # slots filled in the KV cache (see cache_length)
        self.apply(self._init_weights)
        # GPT-2's scaled init of residual projections: keeps the residual stream's variance flat with depth.
        # µP: hidden matrices' init variance scales as 1/fan_in, i.e. std / sqrt(width_mult).
        m = cfg.width_mult
        for name, p in self.named_parameters():
            if name.endswith("wo.weight") or name.endswith("w_down.weight"):
                nn.init.normal_(p, mean=0.0, std=cfg.init_std / math.sqrt(2 * cfg.n_layer * m))
            elif cfg.mup and name.startswith("layers.") and p.dim() == 2:
                nn.init.normal_(p, mean=0.0, std=cfg.init_std / math.sqrt(m))

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    # --- tied embeddings: the output head is the embedding matrix; state dicts on disk hold it once --------------
    def tie_weights(self) -> None:
        """Make the head share the embedding's parameter (again, after `load_state_dict(..., assign=True)`)."""
        if self.config.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    @staticmethod
    def state_for_saving(cfg: ModelConfig, state: dict) -> dict:
        """The state dict without the tied head's duplicate (safetensors refuses shared storage)."""
        return {k: v for k, v in state.items() if not (cfg.tie_embeddings and k == "lm_head.weight")}

    @staticmethod
    def state_for_loading(cfg: ModelConfig, state: dict) -> dict:
        """A saved state dict with the tied head filled in from the embedding, as `load_state_dict` expects."""
        if cfg.tie_embeddings and "embed.weight" in state:
            state = {**state, "lm_head.weight": state["embed.weight"]}
        return state

    # --- KV cache: the model owns it; callers set it up, trim it, reorder its rows or install rows they kept -----
    def setup_cache(self, batch: int, max_len: int | None = None, dtype=None) -> None:
        """An empty cache of `batch` rows and `max_len` slots (default: the context length) in every layer."""
        max_len = max_len or self.config.context_length
        dtype = dtype or self.embed.weight.dtype
        device = self.embed.weight.device
        for layer in self.layers:
            layer.attn.cache = KVCache(batch, self.config.n_kv_head, max_len, self.config.head_dim, dtype, device)
        self._cache_length = 0

    def clear_cache(self) -> None:
        for layer in self.layers:
            layer.attn.cache = None
        self._cache_length = 0

    @property
    def has_cache(self) -> bool:
        return self.layers[0].attn.cache is not None

    @property
    def cache_length(self) -> int:
        """Slots filled in every row (0 when no cache is set up); the next pass writes after them."""
        return self._cache_length

    @property
    def cache_capacity(self) -> int:
        return self.layers[0].attn.cache.k.shape[2] if self.has_cache else 0

    def truncate_cache(self, length: int) -> None:
        """Forget the slots from `length` on (a rejected draft's tokens); the next pass overwrites them."""
        if not 0 <= length <= self._cache_length:
            raise ValueError(f"cannot truncate a cache of {self._cache_length} slots to {length}")
        self._cache_length = length

    def set_cache_length(self, length: int) -> None:
        """Mark the first `length` slots filled, after passes that wrote them through `forward_static`."""
        if not 0 <= length <= self.cache_capacity:
            raise ValueError(f"cannot mark {length} slots filled in a cache of {self.cache_capacity}")
        self._cache_length = length

    def select_cache_rows(self, rows: torch.Tensor) -> None:
        """Keep (or repeat) these batch rows of the cache: `repeat_interleave` indices expand one prefilled prompt
        to n samples; a subset drops finished rows."""
        for layer in self.layers:
            layer.attn.cache.select_rows(rows)

    def cache_rows(self, row: int, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """One row's newest `length` keys/values per layer [(k [Hkv, length, D], v)], views into the cache; they
        outlive it, so a caller can keep them across `setup_cache` and `install_cache_rows`."""
        S = self._cache_length
        return [(layer.attn.cache.k[row, :, S - length:S], layer.attn.cache.v[row, :, S - length:S])
                for layer in self.layers]

    def install_cache_rows(self, rows: list[list[tuple[torch.Tensor, torch.Tensor]]], capacity: int) -> None:
        """A fresh cache holding these rows (each a `cache_rows` list), right-aligned: every row ends at the longest
        one's length, which becomes `cache_length`; the slots left of a shorter row are for key_padding to mask."""
        S = max(kv[0][0].shape[1] for kv in rows)
        self.setup_cache(len(rows), max(capacity, S), rows[0][0][0].dtype)
        for j, kv in enumerate(rows):
            for layer, (k, v) in zip(self.layers, kv):
                layer.attn.cache.k[j, :, S - k.shape[1]:S] = k
                layer.attn.cache.v[j, :, S - v.shape[1]:S] = v
        self._cache_length = S

    # --- forward ----------------------------------------------------------------------------------------------------
    def forward(self, idx: torch.Tensor, positions: torch.Tensor | None = None,
                key_padding: torch.Tensor | None = None, return_hidden: bool = False,
                attn_mask: torch.Tensor | None = None, float_logits: bool = True) -> torch.Tensor:
        """idx [B, T] -> logits [B, T, vocab] (float32; with float_logits=False in the head's dtype, bf16 under
        autocast, for a loss that upcasts a chunk of rows at a time: no [tokens x vocab] float32 copy).

        positions: [B, T] or [T] token positions (default: cache_length + arange(T)).
        key_padding: [B, S] bool, True where a key is a real token, over all S = cache_length + T keys seen so far
        (needed for left-padded batches). With a cache, new tokens are appended to it and `cache_length` advances.
        return_hidden: the final normed hidden states [B, T, d_model]; `output_logits` turns them into logits.
        attn_mask: [B, 1, T, T] bool, True where a query may see a key, in place of the causal mask: document-aware
        packing's block-causal mask, built by the caller (codelm/packing.py). Passes without a cache only.
        """
        B, T = idx.shape
        start = self._cache_length if self.has_cache else 0
        if positions is None:
            positions = torch.arange(start, start + T, device=idx.device)
        if positions.dim() == 1:
            positions = positions.unsqueeze(0).expand(B, T)
        self._check_positions(positions)
        cache_slots = torch.arange(start, start + T, device=idx.device) if self.has_cache else None
        if attn_mask is not None and (self.has_cache or key_padding is not None):
            raise ValueError("attn_mask replaces the causal mask of a pass without a cache or key padding")
        if self.config.position == "alibi":
            mask = self._alibi_bias(B, T, start, key_padding, idx.device, attn_mask)
        else:
            mask = attn_mask if attn_mask is not None else self._attention_mask(B, T, start, key_padding,
                                                                                 idx.device)
        x = self._layers(idx, positions, mask, cache_slots, start + T)
        if self.has_cache:
            self._cache_length = start + T
        return x if return_hidden else self.output_logits(x, float_logits)

    def forward_static(self, idx: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor,
                       key_padding: torch.Tensor, return_hidden: bool = False) -> torch.Tensor:
        """The same pass over a static KV cache, the shape a compiled decoding step needs (codelm/compiled.py).

        idx and positions [B, T] with B = the cache's rows; the tokens go to cache `slots` [T] (a tensor, as
        gpt-fast's input_pos) and attend over the first S cache slots, S = key_padding.shape[1] (`key_padding`
        [B, S] bool), masked by slot order and key_padding: keys past a token's own slot are never seen, so slots
        not yet filled need no bookkeeping. Nothing here reads how full the cache is, so one traced step serves
        every position (S may be a dynamic size); it reads nothing back to the host and does not advance
        `cache_length` (the caller does, with `set_cache_length`)."""
        n_keys = key_padding.shape[1]
        keys = torch.arange(n_keys, device=idx.device)
        allowed = (keys[None, :] <= slots[:, None]) & key_padding[:, None, None, :]  # [B, 1, T, S]
        allowed = allowed | (keys[None, :] == slots[:, None])  # a padding query sees itself (no NaN; ignored)
        mask = allowed
        if self.config.position == "alibi":
            distance = (slots[:, None] - keys[None, :]).float()
            bias = -self.alibi_slopes[None, :, None, None] * distance
            mask = bias.masked_fill(~allowed, float("-inf"))
        x = self._layers(idx, positions, mask, slots, n_keys)
        return x if return_hidden else self.output_logits(x)

    def _layers(self, idx, positions, mask, cache_slots, n_keys) -> torch.Tensor:
        """Embedding, the blocks and the final norm: the normed hidden states [B, T, d_model]."""
        cfg = self.config
        cos = sin = None
        if cfg.position == "rope":
            cos = self.rope_cos[positions].unsqueeze(1)
            sin = self.rope_sin[positions].unsqueeze(1)
        x = self.embed(idx)
        if cfg.position == "learned":
            x = x + self.pos_embed(positions)
        if cfg.mup:
            x = x * cfg.mup_embedding_mult
        for layer in self.layers:
            x = layer(x, cos, sin, mask, cache_slots, n_keys)
        return self.norm(x)

    def output_logits(self, hidden: torch.Tensor, float_logits: bool = True) -> torch.Tensor:
        """Final hidden states -> float32 logits. µP divides by the width multiplier so that logits stay O(1) as the
        model widens (the output layer's weights see a sum over d_model correlated terms)."""
        logits = self.lm_head(hidden)
        if self.config.mup:
            logits = logits * (self.config.mup_output_mult / self.config.width_mult)
        return logits.float() if float_logits else logits

    def _check_positions(self, positions: torch.Tensor) -> None:
        """Positions past the rotary/learned tables are a caller's bug. Reading the maximum back from an accelerator
        would stall every decoding step on a device sync, so there the check is an asynchronous device assert."""
        limit = self.config.context_length
        if positions.device.type == "cpu":
            if int(positions.max()) >= limit:
                raise ValueError(f"position {int(positions.max())} is beyond context_length={limit}")
        else:
            torch._assert_async(positions.max() < limit, f"a position is beyond context_length={limit}")

    def _attention_mask(self, B, T, start, key_padding, device, always: bool = False):
        """None for the plain causal case (SDPA's fused path), else a bool mask [B, 1, T, start+T].

        One new token per row (a decoding step) sees every key already cached, so causality needs no mask there:
        only padding does, and the key_padding row is the mask (its newest slot forced on, as below)."""
        if key_padding is None and not always and (start == 0 or T == 1):
            return None
        S = start + T
        if T == 1 and key_padding is not None:
            mask = key_padding[:, None, None, :S].clone()
            mask[..., -1] = True
            return mask
        q_pos = torch.arange(start, S, device=device).unsqueeze(1)
        causal = torch.arange(S, device=device).unsqueeze(0) <= q_pos  # [T, S]
        mask = causal.unsqueeze(0).unsqueeze(0).expand(B, 1, T, S)
        if key_padding is not None:
            mask = mask & key_padding[:, None, None, :S]
            # a fully padded query row would give NaN in softmax; let it see itself (its output is ignored anyway)
            diag = torch.zeros(T, S, dtype=torch.bool, device=device)
            diag[torch.arange(T), torch.arange(start, S)] = True
            mask = mask | diag
        return mask

    def _alibi_bias(self, B, T, start, key_padding, device, allowed=None):
        """ALiBi: a float mask [B, H, T, S] = -slope * (query index - key index), -inf where masked. ALiBi only sees
        distances, and within a row whose real tokens are contiguous (left padding included: padding is masked) index
        distance is position distance, so no key positions need to be kept with the cache (nor reordered with it)."""
        S = start + T
        distance = (torch.arange(start, S, device=device)[:, None] - torch.arange(S, device=device)[None, :]).float()
        bias = -self.alibi_slopes[None, :, None, None] * distance  # [1, H, T, S]
        if allowed is None:
            allowed = self._attention_mask(B, T, start, key_padding, device, always=True)
        return bias.masked_fill(~allowed, float("-inf"))


# ----------------------------------------------------------------------------------------------------------------
# Optimizer parameter groups
# ----------------------------------------------------------------------------------------------------------------
def optimizer_groups(model: Transformer, lr: float, weight_decay: float) -> list[dict]:
    """AdamW parameter groups, the one place that decides which parameters decay and at what lr they learn.
    Matrices decay, vectors (norm gains, biases) do not (GPT-3/Llama). Under µP, hidden matrices (everything 2-D
    inside the blocks) get lr / width_mult (Adam's update size does not shrink with fan-in, so the step must), while
    embeddings and the output head keep the base lr. Each group carries `lr_scale`: a scheduler must set
    `group["lr"] = lr_now * group["lr_scale"]`, not overwrite every group with the same lr.
    Without µP this is the plain two-group decay/no-decay split, parameters in model order (so optimizer states
    saved by earlier runs still line up)."""
    m = model.config.width_mult
    hidden, other_matrices, vectors = [], [], []
    for name, p in model.named_parameters():  # named_parameters yields a tied weight once
        if not p.requires_grad:
            continue
        if p.dim() < 2:
            vectors.append(p)
        elif name.startswith("layers.") and model.config.mup:
            hidden.append(p)
        else:
            other_matrices.append(p)
    groups = [{"params": hidden, "weight_decay": weight_decay, "lr_scale": 1.0 / m},
              {"params": other_matrices, "weight_decay": weight_decay, "lr_scale": 1.0},
              {"params": vectors, "weight_decay": 0.0, "lr_scale": 1.0}]
    groups = [g for g in groups if g["params"]]
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
    return groups


# ----------------------------------------------------------------------------------------------------------------
# Accounting
# ----------------------------------------------------------------------------------------------------------------
def count_parameters(model_or_cfg, non_embedding: bool = False) -> int:
    """Unique parameters (tied embeddings counted once). non_embedding drops the token embedding table."""
    model = model_or_cfg if isinstance(model_or_cfg, nn.Module) else _meta_model(model_or_cfg)
    n = sum(p.numel() for p in model.parameters())
    if non_embedding:
        n -= model.embed.weight.numel()
        if hasattr(model, "pos_embed"):  # learned positions are a lookup table too (Kaplan et al., nanoGPT)
            n -= model.pos_embed.weight.numel()
    return n


def flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> dict[str, float]:
    """Training FLOPs per token (forward + backward = 3x forward), the PaLM appendix-B accounting:
    6 * (matmul parameters incl. the output head) + 12 * n_layer * d_model * seq_len for attention scores."""
    T = seq_len or cfg.context_length
    matmul_params = count_parameters(cfg, non_embedding=True)
    if cfg.tie_embeddings:  # the tied head is a matmul too, though its weights are the embedding's
        matmul_params += cfg.vocab_size * cfg.d_model
    attention = 12 * cfg.n_layer * cfg.d_model * T
    train = 6 * matmul_params + attention
    return {"train": float(train), "forward": float(train / 3)}


def _meta_model(cfg: ModelConfig) -> "Transformer":
    with torch.device("meta"):
        return Transformer(cfg)


def describe(cfg: ModelConfig) -> dict:
    return {"parameters": count_parameters(cfg), "non_embedding_parameters": count_parameters(cfg, True),
            "flops_per_token_train": flops_per_token(cfg)["train"]}

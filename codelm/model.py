"""The codelm decoder: a Llama-family transformer in one file, read top to bottom.

References: nanoGPT and gpt-fast (structure, KV cache), Llama (RMSNorm, rotary positions, SwiGLU, no biases),
Gopher (RMSNorm), BTLM-3B-8K (SwiGLU), MIM (arXiv 2303.07295: multi-query attention at 350M-2.7B).
The default block is chosen so that a checkpoint maps one-to-one onto Hugging Face's Llama format.

    RMSNorm -> attention (rotary, grouped/multi-query, SDPA) -> RMSNorm -> SwiGLU MLP, pre-norm residuals

Incremental decoding uses a preallocated KV cache; `forward` takes explicit positions and an optional key-padding
mask so that left-padded batches (many prompts at once) and both reading directions use the same code.
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

    def __post_init__(self):
        if self.n_kv_head == 0:
            self.n_kv_head = self.n_head
        if self.ffn_hidden == 0:
            hidden = int(8 * self.d_model / 3)
            self.ffn_hidden = -(-hidden // self.ffn_multiple_of) * self.ffn_multiple_of
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head={self.n_head} is not divisible by n_kv_head={self.n_kv_head}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config fields: {sorted(unknown)}")
        return cls(**d)


# Named presets. CPU presets use a truncated vocabulary (DESIGN.md); the paper presets the full cl100k one.
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


def rotary_tables(head_dim: int, length: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [length, head_dim] in HF Llama's "rotate half" layout, so weights port without permutation."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
    emb = torch.cat([angles, angles], dim=-1)
    return emb.cos(), emb.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, D]; cos/sin [B, 1, T, D] gathered at each token's position."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x.float() * cos + rotated.float() * sin).type_as(x)


class KVCache(nn.Module):
    """Preallocated keys/values for one layer (gpt-fast's shape). `length` is shared by all layers of a model."""

    def __init__(self, batch: int, n_kv_head: int, max_len: int, head_dim: int, dtype, device):
        super().__init__()
        shape = (batch, n_kv_head, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = start + k.shape[2]
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.wq = nn.Linear(cfg.d_model, cfg.n_head * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.d_model, cfg.n_kv_head * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.d_model, cfg.n_kv_head * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_head * cfg.head_dim, cfg.d_model, bias=False)
        self.cache: KVCache | None = None

    def forward(self, x, cos, sin, mask, cache_start: int):
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if self.cache is not None:
            k, v = self.cache.update(cache_start, k, v)
        if self.n_kv_head != self.n_head:  # expand shared K/V heads (grouped/multi-query attention)
            k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
            v = v.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
        if mask is None:  # plain causal training pass: let SDPA pick its fused kernel
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.wo(y.transpose(1, 2).reshape(B, T, -1))


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.w_gate = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)
        self.w_up = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)
        self.w_down = nn.Linear(cfg.ffn_hidden, cfg.d_model, bias=False)

    def forward(self, x):
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg)

    def forward(self, x, cos, sin, mask, cache_start: int):
        x = x + self.attn(self.attn_norm(x), cos, sin, mask, cache_start)
        return x + self.mlp(self.mlp_norm(x))


# ----------------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------------
class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        cos, sin = rotary_tables(cfg.head_dim, cfg.context_length, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.cache_length = 0  # tokens already in the KV cache (0 when no cache is set up)
        self.apply(self._init_weights)
        # GPT-2's scaled init of residual projections: keeps the residual stream's variance flat with depth
        for name, p in self.named_parameters():
            if name.endswith("wo.weight") or name.endswith("w_down.weight"):
                nn.init.normal_(p, mean=0.0, std=cfg.init_std / math.sqrt(2 * cfg.n_layer))

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)

    # --- KV cache ---------------------------------------------------------------------------------------------------
    def setup_cache(self, batch: int, max_len: int | None = None, dtype=None):
        max_len = max_len or self.config.context_length
        dtype = dtype or self.embed.weight.dtype
        device = self.embed.weight.device
        for layer in self.layers:
            layer.attn.cache = KVCache(batch, self.config.n_kv_head, max_len, self.config.head_dim, dtype, device)
        self.cache_length = 0

    def clear_cache(self):
        for layer in self.layers:
            layer.attn.cache = None
        self.cache_length = 0

    @property
    def has_cache(self) -> bool:
        return self.layers[0].attn.cache is not None

    # --- forward ----------------------------------------------------------------------------------------------------
    def forward(self, idx: torch.Tensor, positions: torch.Tensor | None = None,
                key_padding: torch.Tensor | None = None, return_hidden: bool = False) -> torch.Tensor:
        """idx [B, T] -> logits [B, T, vocab] (float32).

        positions: [B, T] or [T] rotary positions (default: cache_length + arange(T)).
        key_padding: [B, S] bool, True where a key is a real token, over all S = cache_length + T keys seen so far
        (needed for left-padded batches). With a cache, new tokens are appended to it and `cache_length` advances.
        """
        B, T = idx.shape
        start = self.cache_length if self.has_cache else 0
        if positions is None:
            positions = torch.arange(start, start + T, device=idx.device)
        if positions.dim() == 1:
            positions = positions.unsqueeze(0).expand(B, T)
        if int(positions.max()) >= self.config.context_length:
            raise ValueError(f"position {int(positions.max())} is beyond context_length={self.config.context_length}")
        cos = self.rope_cos[positions].unsqueeze(1)
        sin = self.rope_sin[positions].unsqueeze(1)
        mask = self._attention_mask(B, T, start, key_padding, idx.device)
        x = self.embed(idx)
        for layer in self.layers:
            x = layer(x, cos, sin, mask, start)
        if self.has_cache:
            self.cache_length = start + T
        x = self.norm(x)
        if return_hidden:
            return x
        return self.lm_head(x).float()

    def _attention_mask(self, B, T, start, key_padding, device):
        """None for the plain causal case (SDPA's fused path), else a bool mask [B, 1, T, start+T]."""
        if start == 0 and key_padding is None:
            return None
        S = start + T
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


# ----------------------------------------------------------------------------------------------------------------
# Accounting
# ----------------------------------------------------------------------------------------------------------------
def count_parameters(model_or_cfg, non_embedding: bool = False) -> int:
    """Unique parameters (tied embeddings counted once). non_embedding drops the token embedding table."""
    model = model_or_cfg if isinstance(model_or_cfg, nn.Module) else _meta_model(model_or_cfg)
    n = sum(p.numel() for p in model.parameters())
    if non_embedding:
        n -= model.embed.weight.numel()
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

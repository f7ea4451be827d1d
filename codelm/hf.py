"""Hugging Face interop: export a codelm checkpoint as a Llama-format directory, import Llama and Qwen2 models.

    codelm export --hf DIR CHECKPOINT    config.json, model.safetensors, generation_config.json,
                                         tokenizer.json, tokenizer_config.json, special_tokens_map.json
    codelm import-hf HF_DIR --out CKPT   a codelm checkpoint that keeps the model's own tokenizer (tokenizer.json)

codelm's default block *is* HF's Llama block (RMSNorm, rotary in the rotate-half layout, SwiGLU, no biases), so the
weights map name for name with no permutation; tests/test_hf.py proves logits match to 1e-4 in both directions.
µP models export too: the attention scale, embedding multiplier and logit multiplier are folded into the weights (a
tied µP model is exported untied when the two multipliers differ). ALiBi, learned positions, LayerNorm and the GELU
MLP have no Llama equivalent and are refused.

Families imported (and exported back, tests/test_hf.py): Llama and Code Llama; DeepSeek-Coder 1.3b-33b (Llama with
linear RoPE scaling, `rope_scaling`); Qwen2/Qwen2.5-Coder (model_type qwen2: biases on q/k/v only, `qkv_bias`;
exported as qwen2, since Llama's attention_bias would also bias o_proj). Refused, by name: other RoPE types (Llama
3.1's "llama3", YaRN, dynamic NTK: their frequency rules are not codelm's), Qwen2 with use_sliding_window on,
StarCoder/StarCoder2 (gpt_bigcode / starcoder2: fused c_attn, LayerNorm + GELU with biases, not mapped),
DeepSeek-Coder-V2 (MoE with multi-head latent attention), and any other model_type.

codelm's tiktoken vocabularies become a byte-level BPE `tokenizer.json`: vocab = the ranks' bytes through GPT-2's
byte-to-unicode table, merges recovered by splitting each token into two lower-ranked tokens (the standard
tiktoken -> HF conversion, as transformers' TikTokenConverter does), the cl100k regex as a Split pre-tokenizer, and
codelm's special tokens at codelm's ids. `<|l2r|>` is the BOS token, added by the post-processor as codelm adds it.
`split_special_tokens` is on, so (as in codelm) a special token's *string* in ordinary text is encoded as text.

Imported models keep their tokenizer through `HFTokenizer`, an adapter with codelm's tokenizer interface. Nothing here
touches the network: directories are local paths only. `transformers` is never needed; `tokenizers` is (the `hf` extra).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
import shutil
import time
from pathlib import Path

import torch

from codelm.errors import CheckpointError, ConfigError
from codelm.model import ModelConfig, Transformer

HF_CONFIG, HF_WEIGHTS, HF_INDEX, HF_TOKENIZER = ("config.json", "model.safetensors", "model.safetensors.index.json",
                                                 "tokenizer.json")
HF_TOKENIZER_CONFIG, HF_GENERATION_CONFIG = "tokenizer_config.json", "generation_config.json"


def _require_tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise ConfigError("Hugging Face interop needs the `tokenizers` package: pip install 'codelm[hf]'") from None
    return tokenizers


# ----------------------------------------------------------------------------------------------------------------
# Weight names: codelm <-> HF Llama
# ----------------------------------------------------------------------------------------------------------------
_LAYER_NAMES = {  # codelm name inside layers.{i}. -> HF name inside model.layers.{i}.
    "attn_norm.weight": "input_layernorm.weight",
    "attn.wq": "self_attn.q_proj", "attn.wk": "self_attn.k_proj",
    "attn.wv": "self_attn.v_proj", "attn.wo": "self_attn.o_proj",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    "mlp.w_gate": "mlp.gate_proj", "mlp.w_up": "mlp.up_proj", "mlp.w_down": "mlp.down_proj",
}
_TOP_NAMES = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
              "lm_head.weight": "lm_head.weight"}


def codelm_to_hf_name(name: str) -> str:
    if name in _TOP_NAMES:
        return _TOP_NAMES[name]
    m = re.fullmatch(r"layers\.(\d+)\.(.+?)(\.weight|\.bias)?", name)
    if m:
        i, rest, suffix = m.group(1), m.group(2), m.group(3) or ""
        if rest + suffix in _LAYER_NAMES:
            return f"model.layers.{i}.{_LAYER_NAMES[rest + suffix]}"
        if rest in _LAYER_NAMES:
            return f"model.layers.{i}.{_LAYER_NAMES[rest]}{suffix}"
    raise KeyError(f"no Llama name for codelm tensor {name!r}")


def hf_to_codelm_name(name: str) -> str:
    inverse_top = {v: k for k, v in _TOP_NAMES.items()}
    if name in inverse_top:
        return inverse_top[name]
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", name)
    if m:
        i, rest = m.groups()
        for ours, theirs in _LAYER_NAMES.items():
            if rest == theirs:
                return f"layers.{i}.{ours}"
            if rest.startswith(theirs + "."):
                return f"layers.{i}.{ours}{rest[len(theirs):]}"
    raise KeyError(name)


# ----------------------------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------------------------
def export_refusals(cfg: ModelConfig) -> list[str]:
    """Why a config cannot become a Llama model (empty when it can)."""
    reasons = []
    if cfg.position != "rope":
        reasons.append(f"position={cfg.position!r} (Llama has rotary positions only)")
    if cfg.norm != "rmsnorm":
        reasons.append(f"norm={cfg.norm!r} (Llama has RMSNorm only)")
    if cfg.mlp != "swiglu":
        reasons.append(f"mlp={cfg.mlp!r} (Llama's MLP is gated SwiGLU)")
    return reasons


def llama_state_dict(model: Transformer) -> tuple[dict[str, torch.Tensor], bool]:
    """HF Llama tensors for a codelm model, with µP's multipliers folded into the weights; and whether the result
    still ties its embeddings. Computed in fp32."""
    cfg = model.config
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    tied = cfg.tie_embeddings
    if cfg.mup:
        # HF scores q.k/sqrt(d); µP wants q.k/d: scale q by 1/sqrt(d) (rotary is linear, so the order is free)
        for k in [k for k in state if ".attn.wq." in k]:
            state[k] = state[k] / math.sqrt(cfg.head_dim)
        emb_scale, out_scale = cfg.mup_embedding_mult, cfg.mup_output_mult / cfg.width_mult
        embed, head = state["embed.weight"] * emb_scale, state["lm_head.weight"] * out_scale
        # a tied matrix can carry only one scale: stay tied only when both multipliers agree
        tied = tied and math.isclose(emb_scale, out_scale, rel_tol=1e-6)
        state["embed.weight"], state["lm_head.weight"] = embed, head
    out = {codelm_to_hf_name(k): v.contiguous() for k, v in state.items()}
    if tied:
        out.pop("lm_head.weight")
    return out, tied


def llama_config(cfg: ModelConfig, tokenizer, tied: bool, dtype: torch.dtype) -> dict:
    """config.json for transformers' LlamaForCausalLM, or Qwen2ForCausalLM when only q/k/v have biases (Llama's
    attention_bias would also put one on o_proj). The RoPE settings are written both at the top level
    (transformers 4.x) and in `rope_parameters` (5.x)."""
    qwen2 = cfg.qkv_bias and not cfg.bias
    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling != 1.0:
        rope = {"rope_type": "linear", "factor": cfg.rope_scaling, "rope_theta": cfg.rope_theta}
    family = ({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "use_sliding_window": False,
               "sliding_window": None, "max_window_layers": cfg.n_layer} if qwen2 else
              {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": cfg.bias,
               "mlp_bias": cfg.bias})
    return {
        **family,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.ffn_hidden,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_kv_head,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.context_length,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": {k: v for k, v in rope.items() if k != "rope_theta"} if cfg.rope_scaling != 1.0 else None,
        "rope_parameters": rope,
        "attention_dropout": 0.0,
        "initializer_range": cfg.init_std,
        "tie_word_embeddings": tied,
        "bos_token_id": tokenizer.l2r_id,
        "eos_token_id": tokenizer.eot_id,
        "pad_token_id": getattr(tokenizer, "pad_id", None),
        "torch_dtype": str(dtype).removeprefix("torch."),
        "use_cache": True,
    }


def export_hf(checkpoint, out_dir: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
    """Write a checkpoint (a path, or a loaded codelm.checkpoint.Checkpoint) as a Llama-format directory."""
    from safetensors.torch import save_file
    from codelm.checkpoint import Checkpoint, load_checkpoint

    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    cfg = ckpt.config
    refusals = export_refusals(cfg)
    if refusals:
        raise ConfigError(f"{ckpt.path}: cannot export to the Llama format: {'; '.join(refusals)}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out}: already exists and is not an empty directory")
    dtype = dtype or ckpt.model.embed.weight.dtype
    state, tied = llama_state_dict(ckpt.model)
    state = {k: v.to(dtype) for k, v in state.items()}

    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}-{time.monotonic_ns()}"
    tmp.mkdir(parents=True)
    try:
        save_file(state, str(tmp / HF_WEIGHTS), metadata={"format": "pt"})
        tok = ckpt.tokenizer
        _write_json(tmp / HF_CONFIG, llama_config(cfg, tok, tied, dtype))
        _write_json(tmp / HF_GENERATION_CONFIG, {"bos_token_id": tok.l2r_id, "eos_token_id": tok.eot_id,
                                                 "pad_token_id": getattr(tok, "pad_id", None)})
        write_hf_tokenizer(tok, tmp, cfg.context_length)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


# ----------------------------------------------------------------------------------------------------------------
# tiktoken -> tokenizer.json
# ----------------------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (byte-level BPE vocabularies are spelled in it)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _spell(token: bytes) -> str:
    table = bytes_to_unicode()
    return "".join(table[b] for b in token)


def bpe_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Recover BPE merges from tiktoken ranks: every split of a token into two tokens is a merge, ordered by the rank
    of the result (tiktoken merges the adjacent pair whose concatenation ranks lowest), ties by the parts' ranks."""
    merges = []
    for token, rank in ranks.items():
        if len(token) == 1:
            continue
        local = [(token[:i], token[i:], rank) for i in range(1, len(token))
                 if token[:i] in ranks and token[i:] in ranks]
        local.sort(key=lambda m: (ranks[m[0]], ranks[m[1]]))
        merges.extend(local)
    merges.sort(key=lambda m: m[2])  # stable: keeps the per-token order
    return [(a, b) for a, b, _ in merges]


def onig_pattern(pattern: str) -> str:
    """tiktoken's regex for the Oniguruma engine of `tokenizers`. In Oniguruma (Ruby syntax) `{1,3}+` is not a
    possessive quantifier but "one or more runs of 1-3": `\\p{N}{1,3}+` would keep "1980" whole where tiktoken splits
    "198" "0". A bounded repeat of one character class at the end of an alternative backtracks into nothing, so
    the greedy `{1,3}` is equivalent. (`?+`, `*+`, `++` are possessive in both engines.)"""
    return re.sub(r"(\{\d+(?:,\d*)?\})\+", r"\1", pattern)


def tiktoken_to_hf(tok) -> "tokenizers.Tokenizer":  # noqa: F821
    """A `tokenizers.Tokenizer` that encodes exactly as a codelm (tiktoken) Tokenizer, special tokens at its ids."""
    tokenizers = _require_tokenizers()
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors

    ranks = tok._enc._mergeable_ranks
    vocab = {_spell(token): rank for token, rank in ranks.items()}
    vocab.update(tok.specials)  # codelm's ids, gaps included (the full cl100k leaves 100256 and 100261-100276 free)
    merges = [(_spell(a), _spell(b)) for a, b in bpe_merges(ranks)]
    hf = tokenizers.Tokenizer(models.BPE(vocab, merges, fuse_unk=False, ignore_merges=True))
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(onig_pattern(tok._pattern)), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    hf.decoder = decoders.ByteLevel()
    specials = sorted(tok.specials.items(), key=lambda kv: kv[1])
    hf.add_special_tokens([AddedToken(name, special=True, normalized=False) for name, _ in specials])
    bos = next(name for name, i in tok.specials.items() if i == tok.l2r_id)
    hf.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                      special_tokens=[(bos, tok.l2r_id)])
    return hf


def write_hf_tokenizer(tok, out: Path, context_length: int) -> None:
    """tokenizer.json + tokenizer_config.json + special_tokens_map.json for AutoTokenizer."""
    if isinstance(tok, HFTokenizer):
        (out / HF_TOKENIZER).write_text(tok.to_json())
    else:
        tiktoken_to_hf(tok).save(str(out / HF_TOKENIZER))
    names = {i: name for name, i in tok.specials.items()}
    special_map = {"bos_token": names.get(tok.l2r_id), "eos_token": names.get(tok.eot_id),
                   "pad_token": names.get(getattr(tok, "pad_id", None))}
    special_map = {k: v for k, v in special_map.items() if v is not None}
    extra = [name for name in tok.specials if name not in special_map.values()]
    _write_json(out / "special_tokens_map.json", {**special_map, "additional_special_tokens": extra})
    _write_json(out / HF_TOKENIZER_CONFIG, {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special_map,
        "additional_special_tokens": extra,
        "model_max_length": context_length,
        "clean_up_tokenization_spaces": False,
        # codelm never lets a special token's string in ordinary text become the special token
        "split_special_tokens": True,
    })


# ----------------------------------------------------------------------------------------------------------------
# HFTokenizer: a tokenizers.Tokenizer with codelm's tokenizer interface
# ----------------------------------------------------------------------------------------------------------------
# FIM sentinel spellings of common code models (StarCoder/SantaCoder and Qwen/DeepSeek-style)
_FIM_SPELLINGS = [("<fim_prefix>", "<fim_middle>", "<fim_suffix>"),
                  ("<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>")]


class HFTokenizer:
    """codelm's tokenizer interface (encode, decode, decode_bytes, eot_id, l2r_id, hash, describe, check_same, ...)
    over a Hugging Face fast tokenizer. `l2r_id` is the model's BOS token (None if it has none), `eot_id` its EOS;
    `r2l_id` is None (an imported model reads left to right only); FIM ids are set when the vocabulary has
    StarCoder- or Qwen-style sentinels, else None. As in codelm, special-token strings in text encode as text."""

    kind = "hf"

    def __init__(self, tokenizer_json: str, *, name: str, bos_id: int | None, eos_id: int | None,
                 pad_id: int | None = None):
        tokenizers = _require_tokenizers()
        self._json = tokenizer_json
        self._tok = tokenizers.Tokenizer.from_str(tokenizer_json)
        self._tok.encode_special_tokens = True
        self.name = name
        self.hash = hashlib.sha256(json.dumps(json.loads(tokenizer_json), sort_keys=True).encode()).hexdigest()
        added = self._tok.get_added_tokens_decoder()
        self.specials = {t.content: i for i, t in sorted(added.items()) if t.special}
        self.n_vocab = max([self._tok.get_vocab_size(with_added_tokens=True) - 1, *added]) + 1
        if eos_id is None:
            raise ConfigError(f"tokenizer {name!r}: no end-of-sequence token (eos_token) is defined")
        self.eot_id, self.l2r_id, self.pad_id, self.r2l_id = eos_id, bos_id, pad_id, None
        self.fim_prefix_id = self.fim_middle_id = self.fim_suffix_id = None
        for spelling in _FIM_SPELLINGS:
            ids = [self._tok.token_to_id(s) for s in spelling]
            if all(i is not None for i in ids):
                self.fim_prefix_id, self.fim_middle_id, self.fim_suffix_id = ids
                break
        self._bytes = self._token_bytes_table()

    # --- construction -------------------------------------------------------------------------------------------
    @classmethod
    def from_dir(cls, path: str | os.PathLike, name: str | None = None) -> "HFTokenizer":
        """A Hugging Face model directory's tokenizer: tokenizer.json, with BOS/EOS/PAD from tokenizer_config.json
        (falling back to config.json / generation_config.json ids)."""
        path = Path(path)
        tj = path / HF_TOKENIZER
        if not tj.is_file():
            raise CheckpointError(f"{tj}: missing (only fast tokenizers saved as tokenizer.json are supported)")
        text = tj.read_text(encoding="utf-8")
        probe = _require_tokenizers().Tokenizer.from_str(text)
        tcfg = _read_json_if(path / HF_TOKENIZER_CONFIG)
        ids = {}
        for key in ("bos", "eos", "pad"):
            token = tcfg.get(f"{key}_token")
            token = token.get("content") if isinstance(token, dict) else token
            ids[key] = probe.token_to_id(token) if token else None
            if ids[key] is None:
                for extra in (HF_GENERATION_CONFIG, HF_CONFIG):
                    value = _read_json_if(path / extra).get(f"{key}_token_id")
                    value = value[0] if isinstance(value, list) and value else value
                    if isinstance(value, int):
                        ids[key] = value
                        break
        return cls(text, name=name or f"hf:{path.resolve().name}", bos_id=ids["bos"], eos_id=ids["eos"],
                   pad_id=ids["pad"])

    @classmethod
    def from_checkpoint(cls, path: Path, desc: dict) -> "HFTokenizer":
        """The tokenizer stored inside a codelm checkpoint (its tokenizer.json), verified against the config."""
        tj = Path(path) / HF_TOKENIZER
        if not tj.is_file():
            raise CheckpointError(f"{tj}: missing (this checkpoint's tokenizer is a Hugging Face tokenizer)")
        tok = cls(tj.read_text(encoding="utf-8"), name=desc.get("name", "hf"), bos_id=desc.get("bos_id"),
                  eos_id=desc.get("eos_id"), pad_id=desc.get("pad_id"))
        tok.check_same(desc, f"{tj}")
        return tok

    def to_json(self) -> str:
        return self._json

    def save_files(self, directory: Path) -> None:
        """Files a checkpoint needs to rebuild this tokenizer (save_checkpoint calls this)."""
        (Path(directory) / HF_TOKENIZER).write_text(self._json, encoding="utf-8")

    # --- encoding -----------------------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str], num_threads: int = 2) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def encode_bytes(self, data: bytes) -> list[int]:
        """Invalid UTF-8 is replaced (HF tokenizers take text, not bytes)."""
        return self.encode(data.decode("utf-8", errors="replace"))

    def decode(self, ids, errors: str = "replace") -> str:
        """The tokens' text, special tokens dropped. Continuation semantics, as generation needs: a SentencePiece-style
        '▁word' decodes to ' word' even as the first token (HF's decode would strip that space)."""
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    def decode_with_specials(self, ids) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def decode_bytes(self, ids) -> bytes:
        """Concatenated token bytes (specials and unknown ids dropped), so a streamed multi-byte character can be
        completed by the next token, as with tiktoken."""
        table = self._bytes
        return b"".join(table[i] for i in ids if 0 <= i < len(table))

    def token_bytes(self, i: int) -> bytes:
        return self._bytes[i]

    def is_special(self, i: int) -> bool:
        return i in self._special_ids

    @functools.cached_property
    def _special_ids(self) -> frozenset[int]:
        return frozenset(self.specials.values())

    def _token_bytes_table(self) -> list[bytes]:
        """Each id's bytes: byte-level BPE vocabularies are spelled through GPT-2's table; SentencePiece-style ones
        use '▁' for space and <0xNN> byte-fallback tokens. Special tokens map to b''."""
        spec = json.loads(self._json)
        decoder = json.dumps(spec.get("decoder") or {})
        inverse = {c: b for b, c in bytes_to_unicode().items()}
        byte_level = '"ByteLevel"' in decoder
        table = [b""] * self.n_vocab
        for token, i in self._tok.get_vocab(with_added_tokens=False).items():
            if i >= self.n_vocab:
                continue
            if byte_level and all(c in inverse for c in token):
                table[i] = bytes(inverse[c] for c in token)
            elif re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", token):
                table[i] = bytes([int(token[3:5], 16)])
            else:
                table[i] = token.replace("\u2581", " ").encode("utf-8")
        for i, added in self._tok.get_added_tokens_decoder().items():  # added tokens are stored as plain text
            if i < self.n_vocab:
                table[i] = b"" if added.special else added.content.encode("utf-8")
        return table

    # --- identity -----------------------------------------------------------------------------------------------
    def describe(self) -> dict:
        return {"kind": "hf", "name": self.name, "hash": self.hash, "n_vocab": self.n_vocab,
                "specials": self.specials, "bos_id": self.l2r_id, "eos_id": self.eot_id, "pad_id": self.pad_id}

    def check_same(self, other, what: str) -> None:
        from codelm.errors import TokenizerMismatch

        other_hash = other.get("hash") if isinstance(other, dict) else getattr(other, "hash", None)
        other_name = other.get("name") if isinstance(other, dict) else getattr(other, "name", None)
        if other_hash != self.hash:
            raise TokenizerMismatch(f"{what} was made with tokenizer {other_name!r} ({str(other_hash)[:12]}), "
                                    f"not {self.name!r} ({self.hash[:12]})")

    def __repr__(self) -> str:
        return f"HFTokenizer({self.name!r}, n_vocab={self.n_vocab}, hash={self.hash[:12]})"


def _read_json_if(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt JSON ({e})") from None
    return value if isinstance(value, dict) else {}


# ----------------------------------------------------------------------------------------------------------------
# Import
# ----------------------------------------------------------------------------------------------------------------
def is_hf_model_dir(path: str | os.PathLike) -> bool:
    """A Hugging Face model directory: config.json with a model_type (codelm's own config.json has a format)."""
    cfg = Path(path) / HF_CONFIG
    if not cfg.is_file():
        return False
    try:
        d = json.loads(cfg.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(d, dict) and "model_type" in d and "format" not in d


IMPORTABLE = ("llama", "qwen2")  # model_type values codelm computes exactly (Code Llama, DeepSeek-Coder, Qwen2.5-Coder)


def rope_settings(hf: dict, where: str) -> tuple[float, float]:
    """(rope_theta, linear scaling factor) from config.json, in either transformers' 4.x (`rope_scaling`) or 5.x
    (`rope_parameters`) spelling. Only the default and linear rope types compute as codelm does."""
    params = dict(hf.get("rope_parameters") or {})
    params.update(hf.get("rope_scaling") or {})
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ("default", "linear"):
        raise ConfigError(f"{where}: rope scaling {rope_type!r} is not supported (only none and 'linear')")
    factor = float(params.get("factor", 1.0)) if rope_type == "linear" else 1.0
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0))), factor


def model_config_from_hf(hf: dict, where: str, tokenizer_name: str = "hf") -> ModelConfig:
    """A Llama or Qwen2 config.json -> ModelConfig; anything codelm would compute differently is refused by name."""
    def need(key):
        if key not in hf:
            raise ConfigError(f"{where}: missing field {key!r}")
        return hf[key]

    model_type = hf.get("model_type")
    if model_type not in IMPORTABLE:
        raise ConfigError(f"{where}: model_type {model_type!r} is not supported (only {', '.join(IMPORTABLE)})")
    rope_theta, rope_scaling = rope_settings(hf, where)
    if hf.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"{where}: hidden_act {hf['hidden_act']!r} is not supported (only 'silu', SwiGLU)")
    if model_type == "qwen2":  # Qwen2 always has q/k/v biases and nothing else; its sliding window is usually off
        bias, qkv_bias = False, True
        if hf.get("use_sliding_window"):
            raise ConfigError(f"{where}: use_sliding_window=true is not supported (codelm attends to the whole "
                              f"context)")
        ignored = ("attn_logit_softcapping", "final_logit_softcapping")
    else:
        attention_bias, mlp_bias = bool(hf.get("attention_bias", False)), bool(hf.get("mlp_bias", False))
        if attention_bias != mlp_bias:
            raise ConfigError(f"{where}: attention_bias={attention_bias} with mlp_bias={mlp_bias} is not supported "
                              f"(codelm's `bias` covers both)")
        bias, qkv_bias = attention_bias, False
        ignored = ("sliding_window", "attn_logit_softcapping", "final_logit_softcapping")
    d_model, n_head = need("hidden_size"), need("num_attention_heads")
    if hf.get("head_dim") not in (None, d_model // n_head) or d_model % n_head:
        raise ConfigError(f"{where}: head_dim {hf.get('head_dim')} != hidden_size / num_attention_heads is not "
                          f"supported")
    for key in ignored:
        if hf.get(key):
            raise ConfigError(f"{where}: {key}={hf[key]} is not supported")
    try:
        return ModelConfig(
            vocab_size=need("vocab_size"), context_length=need("max_position_embeddings"),
            n_layer=need("num_hidden_layers"), n_head=n_head, n_kv_head=hf.get("num_key_value_heads") or n_head,
            d_model=d_model, ffn_hidden=need("intermediate_size"), rope_theta=rope_theta, rope_scaling=rope_scaling,
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)), tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            init_std=float(hf.get("initializer_range", 0.02)), tokenizer=tokenizer_name, bias=bias,
            qkv_bias=qkv_bias)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None


def read_hf_weights(path: Path) -> dict[str, torch.Tensor]:
    """model.safetensors, or the shards listed in model.safetensors.index.json."""
    from safetensors.torch import load_file

    if (path / HF_WEIGHTS).is_file():
        files = [path / HF_WEIGHTS]
    elif (path / HF_INDEX).is_file():
        index = _read_json_if(path / HF_INDEX).get("weight_map", {})
        files = [path / f for f in sorted(set(index.values()))]
    else:
        raise CheckpointError(f"{path}: no {HF_WEIGHTS} or {HF_INDEX} (only safetensors weights are supported)")
    state = {}
    for f in files:
        try:
            state.update(load_file(str(f)))
        except FileNotFoundError:
            raise CheckpointError(f"{f}: missing (listed in {HF_INDEX})") from None
        except Exception as e:
            raise CheckpointError(f"{f}: corrupt safetensors file ({e})") from None
    return state


def import_hf(path: str | os.PathLike):
    """A Llama-architecture HF directory -> a loaded codelm Checkpoint (eval mode, fp32) with an HFTokenizer."""
    from codelm.checkpoint import Checkpoint, default_capabilities, load_matching_state

    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such Hugging Face model directory")
    hf = _read_json_if(path / HF_CONFIG)
    if not hf:
        raise CheckpointError(f"{path / HF_CONFIG}: missing or not a JSON object")
    tokenizer = HFTokenizer.from_dir(path)
    cfg = model_config_from_hf(hf, str(path / HF_CONFIG), tokenizer.name)
    if tokenizer.n_vocab > cfg.vocab_size:
        raise ConfigError(f"{path}: tokenizer has {tokenizer.n_vocab} ids but vocab_size is {cfg.vocab_size}")
    state = {}
    for name, tensor in read_hf_weights(path).items():
        if name.endswith("rotary_emb.inv_freq"):  # a buffer some older checkpoints saved; recomputed here
            continue
        try:
            state[hf_to_codelm_name(name)] = tensor
        except KeyError:
            raise CheckpointError(f"{path}: unexpected tensor {name!r} for a {hf.get('model_type')} model") from None
    if cfg.tie_embeddings:
        state["lm_head.weight"] = state.get("embed.weight")
    model = Transformer(cfg)
    load_matching_state(model, state, str(path), "config.json", codelm_to_hf_name)  # copies into fp32 params
    model.eval()
    caps = default_capabilities(tokenizer, cfg.context_length)
    caps.update({"can_fim": False, "imported_from": "hf"})
    return Checkpoint(path=path, model=model, tokenizer=tokenizer, config=cfg, capabilities=caps,
                      meta={"imported_from": str(path.resolve()), "hf_config": hf})


def import_hf_to_checkpoint(hf_dir: str | os.PathLike, out: str | os.PathLike) -> Path:
    """`codelm import-hf`: write a codelm checkpoint (weights, config, tokenizer.json) for an HF Llama directory."""
    from codelm.checkpoint import save_checkpoint

    ckpt = import_hf(hf_dir)
    return save_checkpoint(out, ckpt.model, ckpt.tokenizer, capabilities=ckpt.capabilities,
                           meta={"imported_from": ckpt.meta["imported_from"]})

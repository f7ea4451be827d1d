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

Imported models keep their tokenizer through `HFTokenizer` (codelm/hf_tokenizer.py, `hf:DIR`). Nothing here
touches the network: directories are local paths only. `transformers` is never needed; `tokenizers` is (the `hf` extra).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from pathlib import Path

import torch

from codelm.atomic import atomic_directory
from codelm.checkpoint import (Checkpoint, default_capabilities, load_matching_state, load_native_checkpoint,
                               save_checkpoint)
from codelm.errors import CheckpointError, ConfigError
from codelm.fast_paths import apply_fast_paths
from codelm.hf_tokenizer import (HF_CONFIG, HF_GENERATION_CONFIG, HF_INDEX, HF_TOKENIZER,  # noqa: F401
                                  HF_TOKENIZER_CONFIG, HF_WEIGHTS, HFTokenizer, _require_tokenizers,
                                  bytes_to_unicode, read_json_if)
from codelm.model import ModelConfig, Transformer
from codelm.terms import FIM, FIM_FORMATS_KEY, MIM, can


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
        **_bos_eos_pad(tokenizer),
        "torch_dtype": str(dtype).removeprefix("torch."),
        "use_cache": True,
    }


def export_hf(checkpoint, out_dir: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
    """Write a checkpoint (a path, or a loaded codelm.checkpoint.Checkpoint) as a Llama-format directory."""
    from safetensors.torch import save_file

    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_native_checkpoint(checkpoint)
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

    with atomic_directory(out) as tmp:
        save_file(state, str(tmp / HF_WEIGHTS), metadata={"format": "pt"})
        tok = ckpt.tokenizer
        _write_json(tmp / HF_CONFIG, llama_config(cfg, tok, tied, dtype))
        _write_json(tmp / HF_GENERATION_CONFIG, _bos_eos_pad(tok))
        write_hf_tokenizer(tok, tmp, cfg.context_length)
    return out


def _bos_eos_pad(tok) -> dict:
    """The model's own BOS/EOS/PAD ids: an imported model's (which may have no BOS or pad), else codelm's
    <|l2r|>, <|endoftext|>, <|pad|>."""
    if isinstance(tok, HFTokenizer):
        return {"bos_token_id": tok.bos_id, "eos_token_id": tok.eot_id, "pad_token_id": tok.own_pad_id}
    return {"bos_token_id": tok.l2r_id, "eos_token_id": tok.eot_id, "pad_token_id": getattr(tok, "pad_id", None)}


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


# ----------------------------------------------------------------------------------------------------------------
# tiktoken -> tokenizer.json
# ----------------------------------------------------------------------------------------------------------------
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
    ids = _bos_eos_pad(tok)
    special_map = {"bos_token": names.get(ids["bos_token_id"]), "eos_token": names.get(ids["eos_token_id"]),
                   "pad_token": names.get(ids["pad_token_id"])}
    special_map = {k: v for k, v in special_map.items() if v is not None}
    extra = [name for name in tok.specials if name not in special_map.values()]
    _write_json(out / "special_tokens_map.json", {**special_map, "additional_special_tokens": extra})
    _write_json(out / HF_TOKENIZER_CONFIG, {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special_map,
        "additional_special_tokens": extra,
        "model_max_length": context_length,
        "clean_up_tokenization_spaces": False,
        # codelm never lets a special token's string in ordinary text become the special token; an imported
        # model keeps Hugging Face's default, so its FIM/MIM tokens (added or its own) are typed as one id each
        "split_special_tokens": not isinstance(tok, HFTokenizer),
    })


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
        index = read_json_if(path / HF_INDEX).get("weight_map", {})
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


ADDABLE_TOKENS = ("fim", "mim")


def parse_add_tokens(spec: str | None) -> tuple[str, ...]:
    """`--add-tokens fim,mim` -> ("fim", "mim"); unknown names are refused."""
    kinds = tuple(k.strip() for k in (spec or "").split(",") if k.strip())
    for k in kinds:
        if k not in ADDABLE_TOKENS:
            raise ConfigError(f"--add-tokens: unknown {k!r}; choose from {', '.join(ADDABLE_TOKENS)}")
    return kinds


def add_objective_tokens(model: Transformer, tokenizer: HFTokenizer, kinds: tuple[str, ...]):
    """The tokens FIM and MIM need, for an imported model: the family's own FIM sentinels are reused when its
    vocabulary has them (StarCoder, Qwen2.5-Coder, DeepSeek-Coder, Code Llama spellings), else codelm's
    <|fim_prefix|> <|fim_middle|> <|fim_suffix|> are added; MIM gets <|r2l|> for its backward direction (its forward
    direction keeps the model's own BOS). New ids take the embedding's padding rows first (rows past the tokenizer's
    vocabulary), then the matrices grow to the next multiple of 64. Every new row (embedding and, untied, output) is
    the mean of the existing vocabulary's rows, the common choice: the model then sees a new token as an average
    token, and the output head gives it an average logit (a little probability mass moves to it; see the tests).
    Returns (model, tokenizer, record for the capabilities)."""
    from codelm.tokenizer import FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, R2L, padded_vocab_size

    record = {"added_tokens": {}, "reused_tokens": {}, "new_rows_init": "mean of existing rows"}
    wanted = []
    if "fim" in kinds:
        if tokenizer.fim_prefix_id is not None:
            record["reused_tokens"]["fim"] = tokenizer.fim_family
        else:
            wanted += [FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX]
    if "mim" in kinds:
        if tokenizer.r2l_id is not None:
            record["reused_tokens"]["mim"] = R2L
        else:
            wanted.append(R2L)
    if not wanted:
        return model, tokenizer, record
    new_tok = tokenizer.with_added_tokens(wanted)
    cfg = model.config
    old_n = tokenizer.n_vocab
    rows = cfg.vocab_size if new_tok.n_vocab <= cfg.vocab_size else padded_vocab_size(new_tok.n_vocab)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for key in ("embed.weight",) + (() if cfg.tie_embeddings else ("lm_head.weight",)):
        old = state[key]
        mean = old[:old_n].mean(0)
        grown = torch.cat([old, mean.expand(rows - old.shape[0], -1)]) if rows > old.shape[0] else old
        grown[old_n:new_tok.n_vocab] = mean  # padding rows reused by the new tokens
        state[key] = grown.contiguous()
    if cfg.tie_embeddings:
        state["lm_head.weight"] = state["embed.weight"]
    new_model = apply_fast_paths(Transformer(dataclasses.replace(cfg, vocab_size=rows)))
    new_model.load_state_dict(state)
    new_model.eval()
    record["added_tokens"] = {name: new_tok.specials[name] for name in wanted}
    record["padding_rows_reused"] = max(0, min(new_tok.n_vocab, cfg.vocab_size) - old_n)
    record["vocab_rows"] = [cfg.vocab_size, rows]
    return new_model, new_tok, record


def import_hf(path: str | os.PathLike, add_tokens: tuple[str, ...] = ()):
    """A Llama or Qwen2 HF directory -> a loaded codelm Checkpoint (eval mode, fp32) with an HFTokenizer; with
    `add_tokens` ("fim", "mim"), the tokens those objectives need (add_objective_tokens)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such Hugging Face model directory")
    hf = read_json_if(path / HF_CONFIG)
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
    state = Transformer.state_for_loading(cfg, state)
    model = apply_fast_paths(Transformer(cfg))
    load_matching_state(model, state, str(path), "config.json", codelm_to_hf_name)  # copies into fp32 params
    model.eval()
    added = {}
    if add_tokens:
        model, tokenizer, added = add_objective_tokens(model, tokenizer, add_tokens)
        cfg = model.config
    caps = default_capabilities(tokenizer, cfg.context_length)
    # an imported model reads left to right; FIM/MIM become capabilities once trained with them
    caps.update({can(FIM): False, can(MIM): False, FIM_FORMATS_KEY: [], "imported_from": "hf", **added})
    return Checkpoint(path=path, model=model, tokenizer=tokenizer, config=cfg, capabilities=caps,
                      meta={"imported_from": str(path.resolve()), "hf_config": hf})


def import_hf_to_checkpoint(hf_dir: str | os.PathLike, out: str | os.PathLike,
                            add_tokens: tuple[str, ...] = ()) -> Path:
    """`codelm import-hf`: write a codelm checkpoint (weights, config, tokenizer.json) for an HF directory."""
    ckpt = import_hf(hf_dir, add_tokens)
    return save_checkpoint(out, ckpt.model, ckpt.tokenizer, capabilities=ckpt.capabilities,
                           meta={"imported_from": ckpt.meta["imported_from"]})

"""GGUF export: a codelm checkpoint as one file for llama.cpp, Ollama, LM Studio and the editor plugins built on them.

    codelm export --gguf FILE CHECKPOINT [--dtype f32|f16|bf16|q8_0]

The model is written as llama.cpp's `llama` architecture. The tensors come from the Hugging Face export
(`codelm.hf.llama_state_dict`: same names' meaning, µP's multipliers folded in, tied or untied) and are renamed to
GGUF's; only one thing changes: llama.cpp's `llama` graph rotates interleaved pairs (x0,x1), (x2,x3), ... where
codelm and HF rotate halves (x_i, x_{i+d/2}), so the rows of Q and K (and their biases) are permuted per head, the
permutation llama.cpp's own HF converter applies.

codelm's tiktoken vocabularies become a GGUF BPE vocabulary (`tokenizer.ggml.model = gpt2`): the ranks spelled
through GPT-2's byte table, merges recovered from the ranks (as for tokenizer.json), codelm's special tokens as control
tokens at codelm's ids, and unused rows (gaps in the full cl100k, embedding padding) as unused `[PADn]` tokens. The
pre-tokenizer is named, not stored: `llama-bpe` (Llama 3's regex, which is cl100k's; llama.cpp also keeps whole
pieces found in the vocabulary as tiktoken does). tests/test_gguf.py compares llama.cpp's token ids with codelm's on
real source files. One known difference, from the regexes: at the very end of a text, whitespace that contains a
newline followed by spaces (a prefix ending in "\\n    ") is one piece in tiktoken (`\\s++$`) and two in Llama 3's.

BOS is `<|l2r|>` (added, as codelm adds it), EOS/EOT `<|endoftext|>`, PAD and FIM pad `<|pad|>`, and the FIM
sentinels are named by `tokenizer.ggml.fim_{pre,suf,mid,pad}_token_id`, so llama.cpp's server `/infill` (llama.vim,
llama.vscode) builds codelm's PSM prompt: `<|l2r|> <|fim_prefix|> prefix <|fim_suffix|> suffix <|fim_middle|>`.
Imported Hugging Face models keep their own vocabulary and name their pre-tokenizer from their tokenizer.json's regex.

Needs the `gguf` package (the `gguf` extra; it is llama.cpp's own writer). Nothing here touches the network.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import torch

from codelm.atomic import atomic_path
from codelm.errors import ConfigError

GGUF_DTYPES = ("f32", "f16", "bf16", "q8_0")
ARCH = "llama"

# tokenizer.json pre-tokenizer regexes -> llama.cpp's names for them (llama-vocab.cpp picks the regex by name).
# cl100k's pattern (tiktoken's newer spelling, and the one Llama 3 / DBRX ship) is llama.cpp's `llama-bpe`.
_CL100K = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|" \
          "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
_GPT2 = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"
PRE_TOKENIZERS = {
    _CL100K: "llama-bpe",
    "'(?i:[sdmt]|ll|ve|re)|[^\\r\\n\\p{L}\\p{N}]?+\\p{L}++|\\p{N}{1,3}+| ?[^\\s\\p{L}\\p{N}]++[\\r\\n]*+|\\s++$|"
    "\\s*[\\r\\n]|\\s+(?!\\S)|\\s": "llama-bpe",
    "'(?i:[sdmt]|ll|ve|re)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s+$|"
    "\\s*[\\r\\n]|\\s+(?!\\S)|\\s": "llama-bpe",  # codelm's own tokenizer.json (hf.onig_pattern of the above)
    _GPT2: "gpt-2",
    # Qwen2 / Qwen2.5(-Coder): cl100k with single digits
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+": "qwen2",
}


def _require_gguf():
    try:
        import gguf
    except ImportError:
        raise ConfigError("GGUF export needs the `gguf` package: pip install 'codelm[gguf]'") from None
    return gguf


# ----------------------------------------------------------------------------------------------------------------
# Tensors
# ----------------------------------------------------------------------------------------------------------------
_LAYER = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
          "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
          "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
_TOP = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight"}


def gguf_name(hf_name: str) -> str:
    """HF Llama tensor name -> GGUF (llama.cpp) tensor name."""
    if hf_name in _TOP:
        return _TOP[hf_name]
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)", hf_name)
    if m and m.group(2) in _LAYER:
        return f"blk.{m.group(1)}.{_LAYER[m.group(2)]}.{m.group(3)}"
    raise KeyError(f"no GGUF name for tensor {hf_name!r}")


def rotate_half_to_interleaved(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Reorder each head's rows so that the rotate-half pairs (i, i + d/2) become adjacent pairs (2i, 2i + 1): what
    llama.cpp's `llama` architecture (interleaved rotary) needs from an HF/codelm Q or K projection (weight or bias)."""
    d = w.shape[0] // n_head
    return w.reshape(n_head, 2, d // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def gguf_tensors(model) -> tuple[dict[str, torch.Tensor], bool]:
    """GGUF-named fp32 tensors for a codelm model, Q/K permuted for interleaved rotary; and whether it is tied."""
    from codelm.hf import llama_state_dict

    cfg = model.config
    state, tied = llama_state_dict(model)
    out = {}
    for name, t in state.items():
        if ".self_attn.q_proj." in name:
            t = rotate_half_to_interleaved(t, cfg.n_head)
        elif ".self_attn.k_proj." in name:
            t = rotate_half_to_interleaved(t, cfg.n_kv_head)
        out[gguf_name(name)] = t.contiguous()
    return out, tied


def _encode_tensor(gguf, name: str, t: torch.Tensor, dtype: str):
    """(data, raw_dtype) in the requested type; 1-D tensors (norms, biases) stay f32, as llama.cpp's converter keeps
    them, and a q8_0 matrix whose rows are not whole 32-value blocks falls back to f16."""
    a = t.float().numpy()
    if a.ndim == 1 or dtype == "f32":
        return a, None
    if dtype == "f16" or (dtype == "q8_0" and a.shape[-1] % 32):
        return a.astype(np.float16), None
    qtype = gguf.GGMLQuantizationType.BF16 if dtype == "bf16" else gguf.GGMLQuantizationType.Q8_0
    return gguf.quants.quantize(a, qtype), qtype


# ----------------------------------------------------------------------------------------------------------------
# Vocabulary
# ----------------------------------------------------------------------------------------------------------------
def _tiktoken_vocab(tok, n_rows: int):
    """(tokens, types, merges, pre) for a codelm tiktoken vocabulary."""
    from gguf import TokenType

    from codelm.hf import _spell, bpe_merges

    ranks = tok._enc._mergeable_ranks
    tokens, types = [f"[PAD{i}]" for i in range(n_rows)], [TokenType.UNUSED] * n_rows
    for token, rank in ranks.items():
        tokens[rank], types[rank] = _spell(token), TokenType.NORMAL
    for name, i in tok.specials.items():
        tokens[i], types[i] = name, TokenType.CONTROL
    merges = [f"{_spell(a)} {_spell(b)}" for a, b in bpe_merges(ranks)]
    return tokens, types, merges, pre_tokenizer_name(tok._pattern, tok.name)


def _hf_vocab(tok, n_rows: int):
    """(tokens, types, merges, pre) for an imported model's byte-level BPE tokenizer.json."""
    from gguf import TokenType

    spec = json.loads(tok.to_json())
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or '"ByteLevel"' not in json.dumps(spec.get("pre_tokenizer") or {}):
        raise ConfigError(f"tokenizer {tok.name!r}: only byte-level BPE vocabularies export to GGUF (this one is a "
                          f"{model.get('type')} model without a ByteLevel pre-tokenizer)")
    tokens, types = [f"[PAD{i}]" for i in range(n_rows)], [TokenType.UNUSED] * n_rows
    for token, i in model.get("vocab", {}).items():
        if i < n_rows:
            tokens[i], types[i] = token, TokenType.NORMAL
    for added in spec.get("added_tokens", []):
        i = added["id"]
        if i < n_rows:
            tokens[i] = added["content"]
            types[i] = TokenType.CONTROL if added.get("special") else TokenType.USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return tokens, types, merges, pre_tokenizer_name(_hf_split_regex(spec), tok.name)


def _hf_split_regex(spec: dict) -> str | None:
    """The regex a tokenizer.json pre-tokenizer splits with: a Split's pattern, or GPT-2's for ByteLevel(use_regex)."""
    def walk(p):
        if not isinstance(p, dict):
            return None
        if p.get("type") == "Sequence":
            for sub in p.get("pretokenizers", []):
                found = walk(sub)
                if found:
                    return found
            return None
        if p.get("type") == "Split":
            pattern = p.get("pattern", {})
            return pattern.get("Regex") or re.escape(pattern.get("String", ""))
        if p.get("type") == "ByteLevel" and p.get("use_regex", True):
            return _GPT2
        return None
    return walk(spec.get("pre_tokenizer"))


def pre_tokenizer_name(pattern: str | None, tokenizer_name: str) -> str:
    """llama.cpp's name for a pre-tokenizer regex; an unknown regex is refused (llama.cpp would silently fall back to
    its default split, and token ids would no longer match the model's)."""
    if pattern in PRE_TOKENIZERS:
        return PRE_TOKENIZERS[pattern]
    raise ConfigError(f"tokenizer {tokenizer_name!r}: its pre-tokenizer regex {pattern!r} has no llama.cpp name "
                      f"(known: {', '.join(sorted(set(PRE_TOKENIZERS.values())))})")


# ----------------------------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------------------------
def export_gguf(checkpoint, out_file: str | os.PathLike, dtype: str = "f32") -> Path:
    """Write a checkpoint (a path, or a loaded codelm.checkpoint.Checkpoint) as one GGUF file, atomically."""
    gguf = _require_gguf()
    from codelm.checkpoint import Checkpoint
    from codelm.loader import load_checkpoint
    from codelm.hf import export_refusals
    from codelm.hf_tokenizer import HFTokenizer

    if dtype not in GGUF_DTYPES:
        raise ConfigError(f"--dtype {dtype!r}: choose one of {', '.join(GGUF_DTYPES)}")
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    cfg, tok = ckpt.config, ckpt.tokenizer
    refusals = export_refusals(cfg)
    if refusals:
        raise ConfigError(f"{ckpt.path}: llama.cpp's llama architecture cannot express {'; '.join(refusals)}")
    out = Path(out_file)
    if out.is_dir():
        raise ConfigError(f"{out}: is a directory (give the .gguf file to write)")
    vocab = _hf_vocab if isinstance(tok, HFTokenizer) else _tiktoken_vocab
    tensors, _ = gguf_tensors(ckpt.model)
    with atomic_path(out) as tmp:  # a reader never sees half a file; a failed export leaves nothing behind
        w = gguf.GGUFWriter(str(tmp), ARCH)
        try:
            _write(w, gguf, ckpt, vocab(tok, cfg.vocab_size), tensors, dtype)
        finally:
            w.close()
    return out


def _write(w, gguf, ckpt, vocabulary, tensors: dict[str, torch.Tensor], dtype: str) -> None:
    cfg, tok = ckpt.config, ckpt.tokenizer
    tokens, types, merges, pre = vocabulary
    w.add_name(Path(str(ckpt.path)).name or "codelm")
    w.add_context_length(cfg.context_length)
    w.add_embedding_length(cfg.d_model)
    w.add_block_count(cfg.n_layer)
    w.add_feed_forward_length(cfg.ffn_hidden)
    w.add_head_count(cfg.n_head)
    w.add_head_count_kv(cfg.n_kv_head)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                     "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype])

    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    if tok.l2r_id is not None:
        w.add_bos_token_id(tok.l2r_id)
    w.add_add_bos_token(tok.l2r_id is not None)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(False)
    w.add_eos_token_id(tok.eot_id)
    w.add_eot_token_id(tok.eot_id)
    pad = getattr(tok, "pad_id", None)
    if pad is not None:
        w.add_pad_token_id(pad)
    keys = gguf.Keys.Tokenizer
    for key, i in ((keys.FIM_PRE_ID, tok.fim_prefix_id), (keys.FIM_SUF_ID, tok.fim_suffix_id),
                   (keys.FIM_MID_ID, tok.fim_middle_id),
                   (keys.FIM_PAD_ID, pad if tok.fim_prefix_id is not None else None)):
        if i is not None:
            w.add_uint32(key, i)

    for name, t in tensors.items():
        data, raw = _encode_tensor(gguf, name, t, dtype)
        w.add_tensor(name, data, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=sys.stderr.isatty())  # a bar with rate and ETA for big models

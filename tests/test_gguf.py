"""GGUF export, checked by llama.cpp itself (llama-cpp-python on the exported file): the same token ids as codelm on
real source files (full and truncated vocabularies), logits within 1e-3 in f32, identical greedy continuations, and
the metadata llama.cpp's /infill relies on. Options llama.cpp's `llama` architecture cannot express are refused.

llama-cpp-python is built from source (no wheels for this platform on PyPI): `.ci/llama_setup.sh` builds and caches
it; without it the llama.cpp tests skip with that reason and the export-only tests still run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf", reason="the `gguf` package is not installed (pip install 'codelm[gguf]')")

import support  # noqa: E402
from support import stdlib_texts  # noqa: E402

from codelm.loader import load_checkpoint  # noqa: E402
from codelm.cli import main  # noqa: E402
from codelm.errors import ConfigError  # noqa: E402
from codelm.generate import SamplingParams, decode_batch  # noqa: E402
from codelm.gguf import export_gguf, rotate_half_to_interleaved  # noqa: E402
from codelm.tokenizer import get_tokenizer  # noqa: E402

SMALL_VOCAB = "cl100k_base:1024"
N_FILES = 48  # real source files for the tokenizer comparison (the issue asks for at least 40)


@pytest.fixture(scope="module")
def llama_cpp():
    return pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (.ci/llama_setup.sh builds "
                                                   "and caches its wheel; pip install 'codelm[gguf]')")


def open_gguf(llama_cpp, path: Path, n_ctx: int = 128, vocab_only: bool = False):
    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_threads=1, logits_all=True,
                           vocab_only=vocab_only, verbose=False, seed=0)


def random_checkpoint(path: Path, tokenizer_name: str = SMALL_VOCAB, **kw) -> Path:
    return support.random_checkpoint(path, tokenizer_name, **{"context_length": 128, **kw})


def metadata(path: Path) -> dict:
    reader = gguf.GGUFReader(str(path))
    return {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}


# ----------------------------------------------------------------------------------------------------------------
# export without llama.cpp
# ----------------------------------------------------------------------------------------------------------------
def test_rotary_permutation_pairs_each_heads_halves():
    """Row i and row i + d/2 of a head (a rotate-half pair) end up adjacent, head by head."""
    n_head, d = 2, 8
    w = torch.arange(n_head * d, dtype=torch.float32)
    out = rotate_half_to_interleaved(w, n_head).tolist()
    assert out == [0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15]


def test_metadata_names_codelm_special_tokens_and_hyperparameters(tmp_path):
    ckpt = load_checkpoint(random_checkpoint(tmp_path / "ckpt", n_kv_head=2, rope_theta=5e5, norm_eps=1e-6))
    out = export_gguf(ckpt, tmp_path / "m.gguf")
    meta, tok, cfg = metadata(out), ckpt.tokenizer, ckpt.config
    assert meta["general.architecture"] == "llama"
    assert (meta["llama.block_count"], meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"],
            meta["llama.embedding_length"], meta["llama.feed_forward_length"], meta["llama.context_length"]) == \
        (2, 4, 2, 64, cfg.ffn_hidden, 128)
    assert meta["llama.rope.freq_base"] == 5e5 and meta["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "llama-bpe"
    assert (meta["tokenizer.ggml.bos_token_id"], meta["tokenizer.ggml.eos_token_id"],
            meta["tokenizer.ggml.eot_token_id"]) == (tok.l2r_id, tok.eot_id, tok.eot_id)
    assert (meta["tokenizer.ggml.fim_pre_token_id"], meta["tokenizer.ggml.fim_suf_token_id"],
            meta["tokenizer.ggml.fim_mid_token_id"], meta["tokenizer.ggml.fim_pad_token_id"]) == \
        (tok.fim_prefix_id, tok.fim_suffix_id, tok.fim_middle_id, tok.pad_id)
    assert meta["tokenizer.ggml.add_bos_token"] is True and meta["tokenizer.ggml.add_space_prefix"] is False
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    assert len(tokens) == len(types) == cfg.vocab_size  # one token per embedding row, padding rows unused
    assert tokens[tok.l2r_id] == "<|l2r|>" and types[tok.l2r_id] == gguf.TokenType.CONTROL
    assert types[tok.n_vocab] == gguf.TokenType.UNUSED and types[300] == gguf.TokenType.NORMAL


def test_dtypes_write_the_requested_tensor_types(tmp_path):
    path = random_checkpoint(tmp_path / "ckpt")
    want = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
            "bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}
    for dtype, qtype in want.items():
        reader = gguf.GGUFReader(str(export_gguf(path, tmp_path / f"{dtype}.gguf", dtype)))
        types = {t.name: t.tensor_type for t in reader.tensors}
        assert types["blk.0.attn_q.weight"] == qtype and types["token_embd.weight"] == qtype, dtype
        assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32  # norms stay f32


@pytest.mark.parametrize("kw,what", [(dict(position="alibi"), "position='alibi'"),
                                     (dict(norm="layernorm"), "norm='layernorm'"),
                                     (dict(mlp="gelu"), "mlp='gelu'")])
def test_what_llama_cannot_express_is_refused_in_one_line(tmp_path, capsys, kw, what):
    path = random_checkpoint(tmp_path / "ckpt", **kw)
    with pytest.raises(ConfigError, match="llama.cpp's llama architecture cannot express"):
        export_gguf(path, tmp_path / "m.gguf")
    assert main(["export", "--gguf", str(tmp_path / "m.gguf"), str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("codelm: error:") and what in err and "\n" not in err
    assert not (tmp_path / "m.gguf").exists() and not list(tmp_path.glob(".tmp-*"))


def test_cli_writes_the_file_and_rejects_a_q8_0_hf_export(tmp_path, capsys):
    path = random_checkpoint(tmp_path / "ckpt")
    assert main(["export", "--gguf", str(tmp_path / "m.gguf"), "--dtype", "q8_0", str(path)]) == 0
    assert "GGUF" in capsys.readouterr().out and (tmp_path / "m.gguf").is_file()
    assert main(["export", "--hf", str(tmp_path / "hf"), "--dtype", "q8_0", str(path)]) == 2
    assert "GGUF type" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# llama.cpp reads what codelm wrote
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def source_files() -> list[str]:
    texts = stdlib_texts(N_FILES)
    assert len(texts) == N_FILES
    # ordinary text that spells special tokens, and whitespace/digit/unicode edge cases
    return texts + ["x = '<|endoftext|>' + '<|fim_prefix|>'  # 12345678 ünïcödé 日本語 🙂\r\n\t\tpass  \n",
                    "a  b   c\n\n\n    d\t\n1 22 333 4444 55555\n"]


@pytest.mark.parametrize("vocabulary", ["cl100k_base", "cl100k_base:16384", SMALL_VOCAB])
def test_llama_cpp_tokenizes_real_source_files_as_codelm(tmp_path, llama_cpp, source_files, vocabulary):
    path = random_checkpoint(tmp_path / "ckpt", vocabulary, n_layer=1, d_model=32, n_head=2)
    out = export_gguf(path, tmp_path / "m.gguf")
    llm = open_gguf(llama_cpp, out, vocab_only=True)
    tok = get_tokenizer(vocabulary)
    for i, text in enumerate(source_files):
        ours = tok.encode(text)
        theirs = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        assert theirs == ours, f"file {i}: first difference at token {_first_difference(ours, theirs)}"
    assert llm.tokenize(b"def f():", add_bos=True, special=False)[0] == tok.l2r_id
    assert llm.token_eos() == tok.eot_id and llm.token_bos() == tok.l2r_id


def _first_difference(a, b) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


LOGIT_CASES = {
    "tied": {},
    "untied-gqa": dict(tie_embeddings=False, n_kv_head=2),
    "mqa-bias": dict(n_kv_head=1, bias=True),
    "mup-tied": dict(mup=True, mup_base_width=16, mup_embedding_mult=3.0, mup_output_mult=2.0),
    "mup-untied": dict(mup=True, mup_base_width=32, mup_embedding_mult=1.5, tie_embeddings=False, n_kv_head=2),
    "rope-theta": dict(rope_theta=500000.0, norm_eps=1e-6),
}


@pytest.mark.parametrize("name", list(LOGIT_CASES))
def test_llama_cpp_f32_logits_match_codelm(tmp_path, llama_cpp, name):
    ckpt = load_checkpoint(random_checkpoint(tmp_path / "ckpt", **LOGIT_CASES[name]))
    out = export_gguf(ckpt, tmp_path / "m.gguf", "f32")
    tok = ckpt.tokenizer
    ids = [tok.l2r_id] + tok.encode("def running_mean(numbers):\n    means = []\n    for i, x in enumerate(numbers):")
    ids = ids[:100]
    with torch.no_grad():
        ours = ckpt.model(torch.tensor([ids]))[0].numpy()
    llm = open_gguf(llama_cpp, out)
    llm.eval(ids)
    theirs = np.asarray(llm.scores[:len(ids)])
    assert theirs.shape == ours.shape
    assert np.abs(theirs - ours).max() <= 1e-3, np.abs(theirs - ours).max()


@pytest.mark.parametrize("dtype,tolerance", [("f16", 0.02), ("bf16", 0.1), ("q8_0", 0.1)])
def test_llama_cpp_reads_the_smaller_types(tmp_path, llama_cpp, dtype, tolerance):
    """f16/bf16/q8_0 files load and give logits close to f32's (relative to the logits' spread)."""
    ckpt = load_checkpoint(random_checkpoint(tmp_path / "ckpt", n_kv_head=2, tie_embeddings=False))
    tok = ckpt.tokenizer
    ids = [tok.l2r_id] + tok.encode("import os\nprint(os.getcwd())\n")
    with torch.no_grad():
        ours = ckpt.model(torch.tensor([ids]))[0].numpy()
    llm = open_gguf(llama_cpp, export_gguf(ckpt, tmp_path / f"{dtype}.gguf", dtype))
    llm.eval(ids)
    theirs = np.asarray(llm.scores[:len(ids)])
    assert np.abs(theirs - ours).max() <= tolerance * np.abs(ours).max()


def llama_cpp_greedy(llm, prompt: list[int], max_new: int, eot: int) -> list[int]:
    out = []
    llm.reset()  # else generate() reuses the cached prefix of the previous prompt
    for t in llm.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
        if t == eot or len(out) == max_new:
            break
        out.append(t)
    return out


@pytest.mark.slow
def test_llama_cpp_greedy_continuations_equal_codelm(tmp_path, llama_cpp, trained_run):
    """The trained micro model (conftest), exported f32: llama.cpp's sampler at temperature 0 continues each prompt
    with exactly codelm's greedy tokens."""
    ckpt = load_checkpoint(trained_run)
    tok = ckpt.tokenizer
    out = export_gguf(ckpt, tmp_path / "m.gguf", "f32")
    llm = open_gguf(llama_cpp, out, n_ctx=ckpt.config.context_length)
    prompts = ["def ", "import os\n\n", "class Reader:\n    def __init__(self", "    return self.", "# Copyright"]
    for prompt in prompts:
        ids = [tok.l2r_id] + tok.encode(prompt)
        ours = decode_batch(ckpt.model, tok, [ids], SamplingParams(max_new_tokens=32), [None])[0][0].token_ids
        assert llama_cpp_greedy(llm, ids, 32, tok.eot_id) == ours, prompt


@pytest.fixture(scope="module")
def imported_gpt2_style(tmp_path_factory, source_files):
    """An HF Llama directory with a GPT-2-style byte-level BPE (trained here on stdlib files), imported as codelm."""
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    from codelm.hf import import_hf

    bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=600, special_tokens=["<s>", "</s>"],
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(source_files[:10], trainer)
    hf_dir = tmp_path_factory.mktemp("hf-gpt2-style")
    bpe.save(str(hf_dir / "tokenizer.json"))
    (hf_dir / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=640, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                      bos_token_id=0, eos_token_id=1, tie_word_embeddings=False)
    transformers.LlamaForCausalLM(config).save_pretrained(hf_dir)
    return hf_dir, import_hf(hf_dir)


def test_imported_hf_model_names_its_own_pre_tokenizer(tmp_path, imported_gpt2_style):
    hf_dir, ckpt = imported_gpt2_style
    meta = metadata(export_gguf(ckpt, tmp_path / "m.gguf"))
    assert meta["tokenizer.ggml.pre"] == "gpt-2" and meta["tokenizer.ggml.bos_token_id"] == 0
    assert "tokenizer.ggml.fim_pre_token_id" not in meta  # no FIM sentinels in this vocabulary
    # a regex llama.cpp has no name for is refused in one line (llama.cpp would split differently, silently)
    hf_dir = Path(shutil.copytree(hf_dir, tmp_path / "hf"))
    spec = json.loads((hf_dir / "tokenizer.json").read_text())
    spec["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "[a-z]+|."}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    (hf_dir / "tokenizer.json").write_text(json.dumps(spec))
    from codelm.hf import import_hf
    with pytest.raises(ConfigError, match="has no llama.cpp name"):
        export_gguf(import_hf(hf_dir), tmp_path / "other.gguf")


def test_imported_hf_model_tokenizes_and_computes_as_in_llama_cpp(tmp_path, llama_cpp, source_files,
                                                                  imported_gpt2_style):
    """Exported from the import: llama.cpp encodes as the model's own tokenizer does, and the logits match."""
    _, ckpt = imported_gpt2_style
    llm = open_gguf(llama_cpp, export_gguf(ckpt, tmp_path / "m.gguf"))
    for i, text in enumerate(source_files[10:30]):
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == ckpt.tokenizer.encode(text), i
    ids = [0] + ckpt.tokenizer.encode("def f(x):\n    return x + 1\n")
    with torch.no_grad():
        ours = ckpt.model(torch.tensor([ids]))[0].numpy()
    llm.eval(ids)
    assert np.abs(np.asarray(llm.scores[:len(ids)]) - ours).max() <= 1e-3

"""Hugging Face interop: codelm and transformers compute the same logits (minGPT's parity test), both directions;
the exported tokenizer.json encodes exactly as codelm's tiktoken vocabulary; options with no Llama equivalent are
refused. Everything is local: random tiny models, HF_HUB_OFFLINE=1 (conftest)."""

import dataclasses
import json
import shutil
import sysconfig
from pathlib import Path

import pytest
import torch

pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")

from codelm.checkpoint import save_checkpoint  # noqa: E402
from support import random_checkpoint  # noqa: E402
from codelm.loader import load_checkpoint  # noqa: E402
from codelm.cli import main  # noqa: E402
from codelm.errors import ConfigError  # noqa: E402
from codelm.generate import SamplingParams, generate  # noqa: E402
from codelm.hf import HFTokenizer, export_hf, import_hf, tiktoken_to_hf  # noqa: E402
from codelm.model import Transformer  # noqa: E402
from codelm.tokenizer import get_tokenizer  # noqa: E402

SMALL_VOCAB = "cl100k_base:1024"  # a valid truncated BPE; keeps conversion and embeddings tiny


def hf_logits(hf_dir: Path, ids: torch.Tensor) -> torch.Tensor:
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        return model(ids).logits.float()


# ----------------------------------------------------------------------------------------------------------------
# export: codelm -> transformers
# ----------------------------------------------------------------------------------------------------------------
EXPORTABLE = {
    "tied": {},
    "untied-gqa": dict(tie_embeddings=False, n_kv_head=2),
    "mqa-bias": dict(n_kv_head=1, bias=True),
    # µP multipliers are folded into the weights; a tied µP model with different multipliers is exported untied
    "mup-tied": dict(mup=True, mup_base_width=16, mup_embedding_mult=3.0, mup_output_mult=2.0),
    "mup-untied": dict(mup=True, mup_base_width=32, mup_embedding_mult=1.5, tie_embeddings=False, n_kv_head=2),
    # DeepSeek-Coder's linear RoPE scaling; Qwen2's q/k/v-only biases (exported as a qwen2 model)
    "rope-linear": dict(rope_scaling=4.0, rope_theta=100000.0, tie_embeddings=False),
    "qkv-bias": dict(qkv_bias=True, n_kv_head=2),
}


@pytest.mark.parametrize("name", list(EXPORTABLE))
def test_exported_model_gives_the_same_logits_in_transformers(tmp_path, name):
    ckpt = load_checkpoint(random_checkpoint(tmp_path / "ckpt", **EXPORTABLE[name]))
    out = export_hf(ckpt, tmp_path / "hf")
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "generation_config.json",
                                               "tokenizer.json", "tokenizer_config.json"}
    ids = torch.randint(0, ckpt.tokenizer.n_vocab, (2, 40))
    with torch.no_grad():
        ours = ckpt.model(ids)
    assert (ours - hf_logits(out, ids)).abs().max() <= 1e-4
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] == (name in ("tied", "mqa-bias", "qkv-bias"))
    assert config["model_type"] == ("qwen2" if name == "qkv-bias" else "llama")
    if name == "rope-linear":  # the positions really are scaled: the same weights unscaled give other logits
        with torch.no_grad():
            plain = Transformer(dataclasses.replace(ckpt.config, rope_scaling=1.0)).eval()
            plain.load_state_dict(ckpt.model.state_dict())
            assert (plain(ids) - ours).abs().max() > 1e-3  # 10x the parity tolerance
        # and codelm reads the export back as the same model
        assert import_hf(out).config.rope_scaling == 4.0


def test_greedy_generation_is_identical(tmp_path):
    ckpt = load_checkpoint(random_checkpoint(tmp_path / "ckpt", n_kv_head=2))
    out = export_hf(ckpt, tmp_path / "hf")
    tok = ckpt.tokenizer
    prompt = [tok.l2r_id] + tok.encode("def fibonacci(n):\n    ")
    ours, step = [], torch.tensor([prompt])
    ckpt.model.setup_cache(1)
    with torch.no_grad():
        for _ in range(8):  # greedy decoding through codelm's KV cache
            step = ckpt.model(step)[:, -1].argmax(-1, keepdim=True)
            ours.append(int(step))
    ckpt.model.clear_cache()
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False, eos_token_id=None,
                         pad_token_id=tok.pad_id)[0, len(prompt):].tolist()
    assert ours == theirs and len(ours) == 8


def test_export_in_bfloat16(tmp_path):
    from safetensors import safe_open

    path = random_checkpoint(tmp_path / "ckpt")
    assert main(["export", "--hf", str(tmp_path / "hf"), "--dtype", "bfloat16", str(path)]) == 0
    with safe_open(str(tmp_path / "hf" / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["torch_dtype"] == "bfloat16"


@pytest.mark.parametrize("options,refused", [
    (dict(position="alibi"), "position='alibi'"),
    (dict(position="learned"), "position='learned'"),
    (dict(norm="layernorm", mlp="gelu"), "norm='layernorm'.*mlp='gelu'"),
])
def test_options_without_a_llama_equivalent_are_refused(tmp_path, options, refused):
    path = random_checkpoint(tmp_path / "ckpt", **options)
    with pytest.raises(ConfigError, match=f"cannot export to the Llama format: {refused}"):
        export_hf(path, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    assert main(["export", "--hf", str(tmp_path / "hf"), str(path)]) == 2


def test_export_refuses_a_non_empty_directory(tmp_path):
    path = random_checkpoint(tmp_path / "ckpt")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not an empty directory"):
        export_hf(path, tmp_path / "hf")


# ----------------------------------------------------------------------------------------------------------------
# tokenizer.json
# ----------------------------------------------------------------------------------------------------------------
TRICKY = [
    "x = '<|endoftext|>'  # a special token's string in ordinary text stays text <|fim_prefix|><|l2r|>",
    "naïve café — 日本語のテキスト, emoji 🐍🚀, combining e\u0301, RTL שלום, math ∑∫√",
    "a    b\t\t\tc\n\n\n\r\n   \n        return   \n\u00a0\u2003 trailing   ",
    "numbers 1234567890 3.14159 1e-10 0xDEADBEEF 1980's it's we'LL THEY'RE",
    "",
]


def stdlib_sources() -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    names = ["textwrap.py", "difflib.py", "json/decoder.py", "unicodedata.py", "locale.py", "encodings/idna.py",
             "tokenize.py", "string.py"]
    return [(root / n).read_text(encoding="utf-8") for n in names if (root / n).is_file()]


@pytest.mark.parametrize("vocab", ["cl100k_base:16384", "cl100k_base"])
def test_tokenizer_json_encodes_exactly_like_codelm(vocab):
    tok = get_tokenizer(vocab)
    hf = tiktoken_to_hf(tok)
    hf.encode_special_tokens = True  # what split_special_tokens=True does in transformers
    texts = stdlib_sources() + TRICKY
    assert len(texts) >= 10
    for text in texts:
        ids = hf.encode(text, add_special_tokens=False).ids
        assert ids == tok.encode(text), text[:60]
        assert hf.decode(ids) == text
    # special tokens at codelm's ids (the full vocabulary has gaps: 100256, 100261-100276)
    for name, i in tok.specials.items():
        assert hf.token_to_id(name) == i


def test_autotokenizer_loads_the_export_with_bos_and_specials(tmp_path):
    ckpt = load_checkpoint(random_checkpoint(tmp_path / "ckpt", tokenizer_name="cl100k_base:16384"))
    out = export_hf(ckpt, tmp_path / "hf")
    tok = ckpt.tokenizer
    hf = transformers.AutoTokenizer.from_pretrained(out)
    assert (hf.bos_token, hf.eos_token, hf.pad_token) == ("<|l2r|>", "<|endoftext|>", "<|pad|>")
    for text in TRICKY[:4] + stdlib_sources()[:2]:
        assert hf(text)["input_ids"] == [tok.l2r_id] + tok.encode(text)  # BOS <|l2r|>, as codelm's generation
        assert hf(text, add_special_tokens=False)["input_ids"] == tok.encode(text)
    assert hf.convert_tokens_to_ids("<|fim_middle|>") == tok.fim_middle_id


# ----------------------------------------------------------------------------------------------------------------
# import: transformers -> codelm
# ----------------------------------------------------------------------------------------------------------------
def random_hf_llama(path: Path, tokenizer_dir: Path, max_shard_size: str | None = None, family: str = "llama",
                    **kw) -> Path:
    """A random tiny LlamaForCausalLM (or Qwen2ForCausalLM) saved by transformers itself, with a tokenizer from
    `tokenizer_dir`."""
    tok = HFTokenizer.from_dir(tokenizer_dir)
    values = dict(vocab_size=1088, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5,
                  rope_theta=50000.0, tie_word_embeddings=False, bos_token_id=tok.l2r_id, eos_token_id=tok.eot_id)
    values.update(kw)
    torch.manual_seed(0)
    if family == "qwen2":
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**values)).eval()
    else:
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**values)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(path, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(tokenizer_dir / name, path / name)
    return path


@pytest.fixture(scope="module")
def exported_tokenizer_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("tok")
    return export_hf(random_checkpoint(tmp / "ckpt"), tmp / "hf")


IMPORTABLE = {
    "llama": {}, "llama-mqa-tied": dict(tie_word_embeddings=True, num_key_value_heads=1),
    "llama-bias": dict(attention_bias=True, mlp_bias=True, num_key_value_heads=4),
    "llama-sharded": dict(max_shard_size="100KB"),
    # DeepSeek-Coder: Llama with linear RoPE scaling (factor 4 in its 1.3b/6.7b/33b configs)
    "deepseek-coder": dict(rope_scaling={"rope_type": "linear", "factor": 4.0}),
    # Qwen2.5-Coder: qwen2 = Llama's block with biases on q/k/v only; sliding window present but off
    "qwen2.5-coder": dict(family="qwen2", tie_word_embeddings=True, use_sliding_window=False, sliding_window=32),
}


@pytest.mark.parametrize("name", list(IMPORTABLE))
def test_imported_model_gives_the_same_logits_as_transformers(tmp_path, exported_tokenizer_dir, name):
    options = IMPORTABLE[name]
    hf_dir = random_hf_llama(tmp_path / "llama", exported_tokenizer_dir, **options)
    if "max_shard_size" in options:
        assert (hf_dir / "model.safetensors.index.json").is_file()
    ckpt = import_hf(hf_dir)
    assert ckpt.config.rope_theta == 50000.0 and ckpt.config.ffn_hidden == 160
    assert ckpt.config.rope_scaling == (4.0 if name == "deepseek-coder" else 1.0)
    assert ckpt.config.qkv_bias == (name == "qwen2.5-coder")
    ids = torch.randint(0, 1088, (2, 60))
    with torch.no_grad():
        ours = ckpt.model(ids)
    assert (ours - hf_logits(hf_dir, ids)).abs().max() <= 1e-4
    # and back: the export is the same model in transformers
    out = export_hf(ckpt, tmp_path / "back")
    assert json.loads((out / "config.json").read_text())["model_type"] == options.get("family", "llama")
    assert (ours - hf_logits(out, ids)).abs().max() <= 1e-4


def test_import_hf_command_writes_a_checkpoint_that_samples(tmp_path, exported_tokenizer_dir, capsys):
    hf_dir = random_hf_llama(tmp_path / "llama", exported_tokenizer_dir)
    assert main(["import-hf", str(hf_dir), "--out", str(tmp_path / "ckpt")]) == 0
    assert (tmp_path / "ckpt" / "tokenizer.json").is_file()
    ckpt = load_checkpoint(tmp_path / "ckpt")
    direct = load_checkpoint(hf_dir)  # an HF directory works wherever a checkpoint does
    assert isinstance(ckpt.tokenizer, HFTokenizer) and ckpt.tokenizer.hash == direct.tokenizer.hash
    assert ckpt.tokenizer.describe()["kind"] == "hf" and not ckpt.capabilities["can_mim"]
    ids = torch.randint(0, 1088, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(ckpt.model(ids), direct.model(ids))
    text = generate(ckpt.model, ckpt.tokenizer, "def add(a, b):", SamplingParams(max_new_tokens=6))
    assert text == generate(direct.model, direct.tokenizer, "def add(a, b):", SamplingParams(max_new_tokens=6))
    # continued pretraining saves it again: the tokenizer travels with it
    again = load_checkpoint(save_checkpoint(tmp_path / "again", ckpt.model, ckpt.tokenizer))
    assert again.tokenizer.hash == ckpt.tokenizer.hash
    # ... and exports back to Hugging Face with the same logits and the model's own tokenizer.json
    out = export_hf(again, tmp_path / "re-export")
    assert (out / "tokenizer.json").read_text() == (hf_dir / "tokenizer.json").read_text()
    assert (ckpt.model(ids) - hf_logits(out, ids)).abs().max() <= 1e-4


def test_hf_tokenizer_adapter_matches_codelm_on_an_exported_vocabulary(exported_tokenizer_dir):
    ours, theirs = get_tokenizer(SMALL_VOCAB), HFTokenizer.from_dir(exported_tokenizer_dir)
    assert (theirs.l2r_id, theirs.eot_id, theirs.pad_id) == (ours.l2r_id, ours.eot_id, ours.pad_id)
    assert (theirs.fim_prefix_id, theirs.fim_middle_id, theirs.fim_suffix_id) == (
        ours.fim_prefix_id, ours.fim_middle_id, ours.fim_suffix_id)
    for text in TRICKY:
        ids = ours.encode(text)
        assert theirs.encode(text) == ids
        assert theirs.decode(ids) == text and theirs.decode_bytes(ids) == ours.decode_bytes(ids)
    # a multi-byte character split across tokens streams as bytes, as with tiktoken
    snake = ours.encode("🐍")
    assert len(snake) > 1 and theirs.decode_bytes(snake[:1]) == ours.decode_bytes(snake[:1])
    with pytest.raises(Exception, match="tokenizer"):
        theirs.check_same(ours, "shard directory x")


def sentencepiece_style_tokenizer_dir(path: Path) -> Path:
    """A Llama-2-style tokenizer.json ('▁' for spaces, <0xNN> byte fallback, <s> </s>), built offline."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    for piece in ["\u2581"] + [chr(i) for i in range(33, 127)]:
        vocab[piece] = len(vocab)
    merges = [("\u2581", "d"), ("\u2581d", "e"), ("\u2581de", "f")]
    vocab.update({a + b: len(vocab) + k for k, (a, b) in enumerate(merges)})
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken("<s>", special=True), AddedToken("</s>", special=True)])
    path.mkdir()
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    return path


def test_hf_tokenizer_adapter_handles_sentencepiece_style_vocabularies(tmp_path):
    tok = HFTokenizer.from_dir(sentencepiece_style_tokenizer_dir(tmp_path / "sp"))
    assert (tok.l2r_id, tok.eot_id, tok.r2l_id, tok.fim_prefix_id) == (1, 2, None, None)
    text = "def f(x):\n    return 'é' <s></s>"
    ids = tok.encode(text)
    assert 1 not in ids and 2 not in ids  # special-token strings in text stay text
    # token bytes: '▁' is a space (the first word's prepended one too), <0xNN> is that byte
    assert tok.decode_bytes(ids) == (" " + text).encode()
    assert tok.decode_bytes([tok._tok.token_to_id("<0xC3>")]) == b"\xc3"
    assert tok.decode(ids + [2]) == " " + text  # specials dropped


@pytest.mark.parametrize("change,message", [
    (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0}), "rope scaling 'llama3'"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "rope scaling 'yarn'"),
    (dict(model_type="qwen2", use_sliding_window=True), "use_sliding_window"),
    (dict(hidden_act="gelu"), "hidden_act 'gelu'"),
    (dict(attention_bias=True, mlp_bias=False), "attention_bias=True with mlp_bias=False"),
    (dict(model_type="mistral"), "model_type 'mistral'"),
    (dict(head_dim=32), "head_dim 32"),
])
def test_unsupported_hf_configs_are_refused(tmp_path, exported_tokenizer_dir, change, message):
    hf_dir = tmp_path / "hf"
    shutil.copytree(exported_tokenizer_dir, hf_dir)
    config = json.loads((hf_dir / "config.json").read_text())
    config.update(change)
    config.pop("rope_parameters") if "rope_scaling" in change else None
    (hf_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=message):
        import_hf(hf_dir)
    assert main(["import-hf", str(hf_dir), "--out", str(tmp_path / "ckpt")]) == 2


# ----------------------------------------------------------------------------------------------------------------
# the real thing: a trained checkpoint through the CLI
# ----------------------------------------------------------------------------------------------------------------
def test_export_command_on_a_trained_run_loads_and_generates_in_transformers(tmp_path, trained_run):
    out = tmp_path / "hf"
    assert main(["export", "--hf", str(out), str(trained_run)]) == 0
    ckpt = load_checkpoint(trained_run)
    model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    prompt = "def add(a, b):\n"
    inputs = tokenizer(prompt, return_tensors="pt")
    assert inputs["input_ids"][0, 0].item() == ckpt.tokenizer.l2r_id
    generated = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    completion = tokenizer.decode(generated[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    ours = generate(ckpt.model, ckpt.tokenizer, prompt, SamplingParams(max_new_tokens=12))
    assert completion == ours and len(completion) > 0
    # and it imports back to the same logits, keeping the exported tokenizer
    back = import_hf(out)
    ids = torch.tensor([ckpt.tokenizer.encode(prompt)])
    with torch.no_grad():
        assert (back.model(ids) - ckpt.model(ids)).abs().max() <= 1e-4
    assert back.tokenizer.encode(prompt) == ckpt.tokenizer.encode(prompt)

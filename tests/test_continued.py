"""Continued pretraining of an open model with FIM and MIM (issue 18), end to end on a tiny random Llama and a
byte-level BPE tokenizer, both built here with transformers/tokenizers (nothing from a hub):

    codelm import-hf DIR --add-tokens fim,mim --out CKPT -> codelm data prepare --tokenizer hf:CKPT
    -> codelm train --init-from CKPT --recipe continued --objective mim:0.5,fim:0.5 -> codelm eval infilling
    -> codelm export --hf, loaded by transformers with codelm's logits and the added tokens as single ids."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")

from support import stdlib_texts  # noqa: E402

from codelm.loader import load_checkpoint  # noqa: E402
from codelm.cli import main  # noqa: E402
from codelm.data.shards import ShardSet  # noqa: E402
from codelm.generate import SamplingParams  # noqa: E402
from codelm.infill import infill  # noqa: E402
from codelm.objectives import MeetInTheMiddle  # noqa: E402
from codelm.tokenizer import get_tokenizer  # noqa: E402
from codelm.train import Trainer, TrainConfig, sample_windows  # noqa: E402

N_BPE = 500  # tokenizer ids (specials included); the model has 512 rows: 12 padding rows


def bpe_tokenizer_dir(path: Path, texts: list[str], fim_spelling: tuple[str, ...] = ()) -> Path:
    """A byte-level BPE trained on `texts` with Llama-style <s> </s> <pad> (and optionally a family's FIM tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<s>", "</s>", "<pad>", *fim_spelling]
    trainer = trainers.BpeTrainer(vocab_size=N_BPE, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    path.mkdir(parents=True)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}))
    return path


def random_llama_dir(path: Path, tokenizer_dir: Path, vocab_size: int = 512, **kw) -> Path:
    import shutil

    from codelm.hf_tokenizer import HFTokenizer

    tok = HFTokenizer.from_dir(tokenizer_dir)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=128, tie_word_embeddings=False,
                                      bos_token_id=tok.bos_id, eos_token_id=tok.eot_id, pad_token_id=tok.own_pad_id,
                                      **kw)
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / name, path / name)
    return path


@pytest.fixture(scope="module")
def corpus():
    texts = stdlib_texts(24)
    return texts[:20], texts[20:]  # train, held out


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, corpus) -> Path:
    tmp = tmp_path_factory.mktemp("open-model")
    return random_llama_dir(tmp / "llama", bpe_tokenizer_dir(tmp / "tok", corpus[0]))


@pytest.fixture(scope="module")
def imported(tmp_path_factory, llama_dir) -> Path:
    out = tmp_path_factory.mktemp("imported") / "ckpt"
    assert main(["import-hf", str(llama_dir), "--add-tokens", "fim,mim", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def shards(tmp_path_factory, corpus, imported) -> Path:
    """`codelm data prepare --tokenizer hf:CKPT` over a directory of real code."""
    tmp = tmp_path_factory.mktemp("prepared")
    src = tmp / "src"
    src.mkdir()
    for i, text in enumerate(corpus[0]):
        (src / f"m{i}.py").write_text(text)
    out = tmp / "shards"
    assert main(["data", "prepare", "--source", str(src), "--out", str(out), "--tokenizer", f"hf:{imported}",
                 "--val-fraction", "0.15", "--near-dedup", "false", "--decontaminate", "false",
                 "--edu-threshold", "0", "--quality-filter", "false", "--workers", "1", "--tasks", "1"]) == 0
    return out


def continued_config(shards: Path, imported: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data=str(shards), out=str(out), init_from=str(imported), recipe="continued",
                objective="mim:0.5,fim:0.5", fim_split="line", steps=12, batch_size=4, context_length=64, lr=3e-3,
                eval_every=0, eval_tokens=1024, save_every=0, log_every=4, precision="fp32", seed=0, plot=False)
    base.update(kw)
    return TrainConfig(**base)


# ----------------------------------------------------------------------------------------------------------------
def test_import_adds_the_tokens_in_padding_rows_as_the_mean_of_existing_rows(llama_dir, imported):
    ckpt, before = load_checkpoint(imported), load_checkpoint(llama_dir)
    tok, caps = ckpt.tokenizer, ckpt.capabilities
    assert caps["added_tokens"] == {"<|fim_prefix|>": N_BPE, "<|fim_middle|>": N_BPE + 1,
                                    "<|fim_suffix|>": N_BPE + 2, "<|r2l|>": N_BPE + 3}
    assert caps["padding_rows_reused"] == 4 and ckpt.config.vocab_size == 512  # no resize: 12 padding rows
    assert (tok.fim_prefix_id, tok.fim_middle_id, tok.fim_suffix_id, tok.r2l_id) == tuple(range(N_BPE, N_BPE + 4))
    assert tok.l2r_id == tok.bos_id == before.tokenizer.bos_id == 0  # the forward direction keeps the model's <s>
    assert not caps["can_fim"] and not caps["can_mim"] and caps["tokenizer_hash"] == tok.hash != before.tokenizer.hash
    for name in ("embed", "lm_head"):
        new, old = getattr(ckpt.model, name).weight, getattr(before.model, name).weight
        torch.testing.assert_close(new[:N_BPE], old[:N_BPE], rtol=0, atol=0)  # the old vocabulary is untouched
        for i in range(N_BPE, N_BPE + 4):
            torch.testing.assert_close(new[i], old[:N_BPE].mean(0))
        torch.testing.assert_close(new[N_BPE + 4:], old[N_BPE + 4:], rtol=0, atol=0)  # unused padding rows kept
    # shards made from the imported checkpoint already match it
    assert get_tokenizer(f"hf:{imported}").hash == tok.hash
    # the mean rows take a little probability mass: the old model's loss moves by well under 1% (3e-4 nats here)
    ids = torch.randint(3, N_BPE, (2, 40))
    x = torch.cat([torch.zeros(2, 1, dtype=torch.long), ids[:, :-1]], 1)
    with torch.no_grad():
        old_loss, new_loss = (F.cross_entropy(m.model(x).flatten(0, 1), ids.flatten()) for m in (before, ckpt))
    assert 0 < abs(float(new_loss - old_loss)) < 0.01 * float(old_loss)


def test_a_model_that_has_fim_tokens_keeps_their_ids_and_only_gains_r2l(tmp_path, corpus):
    spelling = ("<fim_prefix>", "<fim_middle>", "<fim_suffix>")  # StarCoder's
    hf_dir = random_llama_dir(tmp_path / "starcoder-like", bpe_tokenizer_dir(tmp_path / "tok", corpus[0], spelling),
                              vocab_size=N_BPE)  # no padding rows: the matrices grow to the next multiple of 64
    own = load_checkpoint(hf_dir).tokenizer
    ids = (own.fim_prefix_id, own.fim_middle_id, own.fim_suffix_id)
    assert None not in ids and own.fim_family == "starcoder"
    assert main(["import-hf", str(hf_dir), "--add-tokens", "fim,mim", "--out", str(tmp_path / "ckpt")]) == 0
    ckpt = load_checkpoint(tmp_path / "ckpt")
    tok = ckpt.tokenizer
    assert (tok.fim_prefix_id, tok.fim_middle_id, tok.fim_suffix_id) == ids
    assert ckpt.capabilities["added_tokens"] == {"<|r2l|>": N_BPE} and tok.r2l_id == N_BPE
    assert ckpt.capabilities["reused_tokens"] == {"fim": "starcoder"}
    assert ckpt.config.vocab_size == 512 and ckpt.capabilities["vocab_rows"] == [N_BPE, 512]
    # the original vocabulary's logits are unchanged by the resize
    x = torch.randint(0, N_BPE, (1, 20))
    with torch.no_grad():
        torch.testing.assert_close(ckpt.model(x)[..., :N_BPE], load_checkpoint(hf_dir).model(x), rtol=0, atol=1e-5)


def test_step0_forward_loss_is_the_imported_models_own_loss(shards, imported, tmp_path):
    """MIM's forward direction starts from the model's left-to-right weights and its own BOS: the first step's
    forward loss is the imported model's plain next-token loss on the same windows."""
    trainer = Trainer(continued_config(shards, imported, tmp_path / "run"))
    windows, _ = sample_windows(trainer.train_split.tokens, 4, 64, 0, 0)
    mim = trainer.objectives["mim"]
    assert isinstance(mim, MeetInTheMiddle)
    batch = mim.make_batch(windows)
    with torch.no_grad():
        fwd, _, y_fwd, _ = mim.directions(trainer.model.eval(), batch)
        step0 = F.cross_entropy(fwd.reshape(-1, fwd.shape[-1]), y_fwd.reshape(-1))
        own = load_checkpoint(imported)
        w = torch.from_numpy(windows.astype(np.int64))
        x = torch.cat([torch.full((4, 1), own.tokenizer.bos_id), w[:, :-1]], 1)  # the model's own BOS, then text
        logits = own.model(x)
        theirs = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), w.reshape(-1))
    assert abs(float(step0) - float(theirs)) <= 1e-5


def test_continued_run_learns_infills_and_exports_with_the_added_tokens(shards, imported, corpus, tmp_path, caplog):
    trainer = Trainer(continued_config(shards, imported, tmp_path / "run", steps=16))
    before = trainer.validate()
    with caplog.at_level(logging.INFO, logger="codelm.train"):
        summary = trainer.fit()
    assert summary["val_mim_fwd"] < before["val_mim_fwd"] and summary["val_fim"] < before["val_fim"]
    # the progress line shows each objective's own loss
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert lines and all(" | loss " in line for line in lines), lines
    assert " | loss fim " in lines[-1] and " mim fwd " in lines[-1] and " bwd " in lines[-1], lines
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt.capabilities["can_fim"] and ckpt.capabilities["can_mim"]
    assert ckpt.capabilities["added_tokens"]["<|r2l|>"] == N_BPE + 3  # the record travels with the model
    # infilling with the imported tokenizer, both modes
    prefix, suffix = "def add(a, b):\n", "\n\nprint(add(1, 2))\n"
    for mode in ("fim", "mim"):
        result = infill(ckpt.model, ckpt.tokenizer, prefix, suffix, mode=mode,
                        params=SamplingParams(max_new_tokens=8), capabilities=ckpt.capabilities)
        assert isinstance(result.best.text, str) and result.steps[0] >= 1
    # ... and through `codelm eval infilling` (HumanEval single-line, scored in the sandbox), both modes
    for mode in ("fim", "mim"):
        assert main(["eval", "infilling", str(tmp_path / "run"), "--set", "single-line", "--mode", mode, "--limit",
                     "2", "--max-new-tokens", "8", "--output", str(tmp_path / f"eval-{mode}")]) == 0
        summary = json.loads((tmp_path / f"eval-{mode}" / "summary.json").read_text())
        assert "exact_match" in json.dumps(summary)
    # export: transformers loads it with codelm's logits; its tokenizer has the added tokens as single ids
    out = tmp_path / "hf"
    assert main(["export", "--hf", str(out), str(tmp_path / "run")]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == 512 and config["bos_token_id"] == ckpt.tokenizer.bos_id
    model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.tensor([ckpt.tokenizer.encode(corpus[1][0][:300])[:60]])
    ids[0, 5], ids[0, 20] = ckpt.tokenizer.fim_middle_id, ckpt.tokenizer.r2l_id
    with torch.no_grad():
        assert (model(ids).logits - ckpt.model(ids)).abs().max() <= 1e-4
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    for name, i in ckpt.capabilities["added_tokens"].items():
        assert hf_tok(f"x{name}y", add_special_tokens=False)["input_ids"] == (
            ckpt.tokenizer.encode("x") + [i] + ckpt.tokenizer.encode("y"))
    assert load_checkpoint(out).tokenizer.hash == ckpt.tokenizer.hash  # and imports back as the same tokenizer


def test_resume_of_a_continued_run_is_bit_exact(shards, imported, tmp_path):
    whole = Trainer(continued_config(shards, imported, tmp_path / "whole", steps=6))
    whole.fit()
    part = Trainer(continued_config(shards, imported, tmp_path / "part", steps=6))
    part.fit(stop_at=3)
    resumed = Trainer(continued_config(shards, imported, tmp_path / "part", steps=6, resume=True))
    assert resumed.step == 3
    resumed.fit()
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_mismatched_shards_and_missing_lr_are_refused_in_one_line(imported, shards, tmp_path, capsys):
    from support import make_shards

    other = make_shards(tmp_path / "cl100k", stdlib_texts(6), get_tokenizer("cl100k_base:1024"))
    args = ["train", "--init-from", str(imported), "--objective", "mim:0.5,fim:0.5", "--steps", "1",
            "--out", str(tmp_path / "run"), "--batch-size", "2", "--context-length", "32"]
    assert main([*args, "--data", str(other), "--lr", "1e-3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cl100k_base:1024" in err[0] and "hf:" in err[0] and str(imported) in err[0], err
    assert main([*args, "--data", str(shards), "--recipe", "continued"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--recipe continued" in err[0] and "--lr" in err[0], err
    # shard indexes record the tokenizer's identity
    assert ShardSet(shards).tokenizer_desc["hash"] == load_checkpoint(imported).tokenizer.hash


def test_hf_tokenizer_spec_reads_a_model_directory_or_refuses_in_one_line(llama_dir, tmp_path):
    from codelm.errors import ConfigError

    tok = get_tokenizer(f"hf:{llama_dir}")
    assert tok.roles() == {"eot": 1, "l2r": 0, "r2l": None, "fim_prefix": None, "fim_middle": None,
                           "fim_suffix": None, "pad": 2}
    texts = ["def f(x):\n    return x + 1\n", "", "naïve = '<s>'  # specials in text stay text"]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert 0 not in tok.encode(texts[2]) and tok.decode(tok.encode(texts[2])) == texts[2]
    with pytest.raises(ConfigError, match="no such directory"):
        get_tokenizer(f"hf:{tmp_path / 'missing'}")

"""The transformers backend (codelm/backends/transformers_lm.py) on tiny random models of five architectures:
greedy decoding of the batched, left-padded loop equals transformers' own one-prompt generate; a seeded sample is the
same at any batch position and size; FIM prompts are the family's tokens; a model without FIM tokens is refused; the
same Llama weights decode the same through the codelm and the transformers backends."""

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402

from codelm.errors import CapabilityError  # noqa: E402
from codelm.generate import SamplingParams  # noqa: E402
from hf_tiny import ARCHITECTURES, make_model, make_tokenizer  # noqa: E402

PROMPTS = ["def add(a, b):\n    return", "x", "import json\n\n\nclass Encoder:\n    def encode(self, obj):\n"]


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer("starcoder", bos=True)


@pytest.fixture(scope="module", params=ARCHITECTURES)
def lm(request, tokenizer):
    from codelm.backends.transformers_lm import TransformersLM
    return TransformersLM(make_model(request.param, len(tokenizer.get_vocab())), tokenizer, name=request.param)


def reference_greedy(lm, ids, max_new_tokens):
    """transformers' own generate on one unpadded prompt, cut before the end-of-text token."""
    out = lm.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                            max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=sorted(lm.eos_ids),
                            pad_token_id=lm.tokenizer.eot_id)[0, len(ids):].tolist()
    return out[:-1] if out and out[-1] in lm.eos_ids else out


def test_greedy_batched_left_padded_equals_transformers_generate(lm):
    ids = [lm.prompt_ids(p) for p in PROMPTS]
    assert len({len(i) for i in ids}) == len(ids)  # different lengths: the batch is padded
    batch = lm.generate_ids(ids, SamplingParams(max_new_tokens=10))
    for prompt_ids, (completion,) in zip(ids, batch):
        assert completion.token_ids == reference_greedy(lm, prompt_ids, 10)
        assert completion.text == lm.tokenizer.decode(completion.token_ids)


def test_a_seeded_sample_is_the_same_at_any_batch_position_and_size(lm):
    params = SamplingParams(max_new_tokens=6, temperature=1.0, top_p=0.95)
    alone = lm.complete([PROMPTS[0]], params, seeds=[[7, 8]], n=2)[0]
    in_batch = lm.complete([PROMPTS[2], PROMPTS[1], PROMPTS[0]], params, seeds=[[1, 2], [3, 4], [7, 8]], n=2)[2]
    assert [c.text for c in in_batch] == [c.text for c in alone]
    assert alone[0].token_ids != alone[1].token_ids  # two seeds, two samples: the draws are really random


def test_the_model_s_own_bos_handling(tokenizer):
    from codelm.backends.transformers_lm import TransformersLM
    with_bos = TransformersLM(make_model("llama", len(tokenizer.get_vocab())), tokenizer)
    assert with_bos.prompt_ids("x = 1") == tokenizer("x = 1")["input_ids"]
    assert with_bos.prompt_ids("x = 1")[0] == tokenizer.bos_token_id
    plain = make_tokenizer(None, bos=False)  # Qwen2.5-Coder and StarCoder put nothing before a text
    no_bos = TransformersLM(make_model("qwen2", len(plain.get_vocab())), plain)
    assert no_bos.prompt_ids("x = 1") == plain("x = 1")["input_ids"] == plain.encode("x = 1")


@pytest.mark.parametrize("family", ["starcoder", "santacoder", "codellama", "deepseek-coder", "qwen2.5-coder"])
def test_fim_prompts_are_the_family_s_exact_tokens(family):
    from codelm.backends.transformers_lm import TransformersLM
    from codelm.prompts import FIM_TEMPLATES, fim_prompt_text
    tok = make_tokenizer(family, bos=family in ("codellama", "deepseek-coder"))
    lm = TransformersLM(make_model("llama", len(tok.get_vocab())), tok)
    assert lm.fim_family == family
    prefix, suffix = "def add(a, b):\n    return ", "\n\nprint(add(1, 2))\n"
    for fmt in ("psm", "spm") if FIM_TEMPLATES[family].spm else ("psm",):
        expected = tok(fim_prompt_text(family, prefix, suffix, fmt), add_special_tokens=True)["input_ids"]
        assert lm.fim_prompt_ids(prefix, suffix, fmt) == expected
    # code that spells a sentinel stays text: it never becomes the sentinel token
    sentinel = FIM_TEMPLATES[family].sentinels[0]
    assert tok.convert_tokens_to_ids(sentinel) not in lm.fim_prompt_ids(f"s = '{sentinel}'\n", "")[len(lm.head) + 1:]
    (middle,) = lm.infill([prefix], [suffix], SamplingParams(max_new_tokens=6))[0]
    assert middle.finish_reason in ("eot", "length")


def test_a_model_without_fim_tokens_is_refused_in_one_line():
    from codelm.backends.transformers_lm import TransformersLM
    tok = make_tokenizer(None)
    lm = TransformersLM(make_model("phi", len(tok.get_vocab())), tok, name="tiny-phi")
    with pytest.raises(CapabilityError) as error:
        lm.infill(["def f():\n    "], ["\n"], SamplingParams(max_new_tokens=4))
    message = str(error.value)
    assert message.startswith("tiny-phi: the tokenizer has no FIM tokens") and "\n" not in message


def test_out_of_memory_halves_the_batch_and_changes_no_sample(tokenizer, monkeypatch):
    from codelm.backends.transformers_lm import TransformersLM
    lm = TransformersLM(make_model("qwen2", len(tokenizer.get_vocab())), tokenizer)
    params = SamplingParams(max_new_tokens=6, temperature=0.8)
    seeds = [[1, 2], [3, 4], [5, 6]]
    expected = [[c.text for c in row] for row in lm.complete(PROMPTS, params, seeds=seeds, n=2)]
    real_forward = lm._forward

    def forward_with_little_memory(ids, mask, positions, cache):
        if ids.shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_forward(ids, mask, positions, cache)

    monkeypatch.setattr(lm, "_forward", forward_with_little_memory)
    got = [[c.text for c in row] for row in lm.complete(PROMPTS, params, seeds=seeds, n=2)]
    assert got == expected and lm.max_batch == 1


def test_llama_weights_decode_the_same_through_codelm_and_transformers(tokenizer, tmp_path):
    """One tiny Llama saved as a Hugging Face directory: the codelm backend (imported into codelm's Transformer)
    and the transformers backend give the same greedy completions, batched."""
    from codelm.backends.transformers_lm import TransformersLM
    from codelm.generate import generate_batch
    from codelm.hf import import_hf
    model = make_model("llama", len(tokenizer.get_vocab()))
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    ours = import_hf(tmp_path)
    theirs = TransformersLM.load(tmp_path, device="cpu", dtype="float32")
    params = SamplingParams(max_new_tokens=12)
    a = generate_batch(ours.model, ours.tokenizer, PROMPTS, params, capabilities=ours.capabilities)
    b = theirs.complete(PROMPTS, params)
    assert [[c.token_ids for c in row] for row in a] == [[c.token_ids for c in row] for row in b]
    assert [[c.text for c in row] for row in a] == [[c.text for c in row] for row in b]
    assert theirs.describe()["architecture"] == "LlamaForCausalLM"


def test_sample_and_infill_commands_use_the_transformers_backend(tmp_path, capsys):
    """`codelm sample` and `codelm infill` on an architecture codelm cannot convert (StarCoder2, with StarCoder's
    FIM tokens): auto picks the transformers backend and infills with the family template; a model without FIM
    tokens is refused in one `codelm: error:` line."""
    import json

    from codelm.cli import main
    tok = make_tokenizer("starcoder")
    make_model("starcoder2", len(tok.get_vocab())).save_pretrained(tmp_path / "sc2")
    tok.save_pretrained(tmp_path / "sc2")
    assert main(["sample", str(tmp_path / "sc2"), "--prompt", "def f(x):", "--max-new-tokens", "3"]) == 0
    assert "----- sample 1/1" in capsys.readouterr().out
    assert main(["infill", str(tmp_path / "sc2"), "--prefix", "def f(x):\n    return ", "--suffix", "\n",
                 "--max-new-tokens", "3", "--json", "--n", "2", "--temperature", "0.8", "--seed", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["mode"] == "fim" and len(result["samples"]) == 2
    plain = make_tokenizer(None)
    make_model("phi", len(plain.get_vocab())).save_pretrained(tmp_path / "phi")
    plain.save_pretrained(tmp_path / "phi")
    assert main(["infill", str(tmp_path / "phi"), "--prefix", "a", "--suffix", "b"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("codelm: error: ") and "no FIM tokens" in err[-1]  # (above it: transformers' bars)

"""`codelm serve` on models imported from Hugging Face: a tokenizer with no BOS token (Qwen2.5-Coder, StarCoder have
none) must not put a None into the prompt (every completion answered 500 before)."""

import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: hf_tiny

from hf_tiny import save_model_dir  # noqa: E402


@pytest.fixture(scope="module")
def no_bos_llama(tmp_path_factory):
    """A tiny Llama-architecture directory whose tokenizer has no BOS token, imported through codelm/hf.py."""
    from codelm.loader import load_checkpoint
    path = save_model_dir(tmp_path_factory.mktemp("no-bos-llama"), "llama")  # as Qwen2.5-Coder's: no BOS id anywhere
    ckpt = load_checkpoint(path, device="cpu")
    assert ckpt.tokenizer.bos_id is None  # its forward marker falls back to end-of-text (codelm/hf_tokenizer.py)
    return ckpt


def test_completions_of_a_model_without_bos(no_bos_llama):
    from web.app import ServeConfig, create_app
    with TestClient(create_app(no_bos_llama, ServeConfig(max_tokens=16, max_batch=2))) as client:
        r = client.post("/v1/completions", json={"prompt": "def add(a, b):\n    return", "max_tokens": 6,
                                                 "temperature": 0})
        assert r.status_code == 200, r.text
        body = r.json()
        # the prompt's tokens after the forward marker, here the end-of-text (no None, nothing untrained)
        assert body["usage"]["prompt_tokens"] == 1 + len(no_bos_llama.tokenizer.encode("def add(a, b):\n    return"))
        assert body["choices"][0]["finish_reason"] in ("length", "stop")


# --- the transformers backend, and an imported model with a family's FIM tokens ----------------------------------
PREFIX, SUFFIX = "def add(a, b):\n    return ", "\n\nprint(add(1, 2))\n"


@pytest.fixture(scope="module")
def starcoder2_fim(tmp_path_factory):
    """A tiny StarCoder2 (an architecture codelm cannot convert) with StarCoder's FIM tokens and no BOS."""
    from codelm.backends.transformers_lm import TransformersLM
    from web.app import ServedBackend
    path = save_model_dir(tmp_path_factory.mktemp("starcoder2"), "starcoder2", "starcoder", bos=False)
    return ServedBackend(TransformersLM.load(path, device="cpu"), str(path))


def test_the_transformers_backend_serves_completions_and_infills(starcoder2_fim):
    from codelm.backends import auto_backend
    from codelm.generate import SamplingParams
    from web.app import ServeConfig, create_app
    lm = starcoder2_fim.lm
    assert auto_backend(starcoder2_fim.path) == "transformers"  # what `codelm serve` picks for it
    greedy = SamplingParams(max_new_tokens=8)
    with TestClient(create_app(starcoder2_fim, ServeConfig(max_tokens=16, max_batch=2))) as client:
        model = client.get("/v1/models").json()["data"][0]
        assert model["capabilities"]["fim"] and model["fim_template"] == "<fim_prefix>{prefix}<fim_suffix>{suffix}<fim_middle>"
        r = client.post("/v1/completions", json={"prompt": PREFIX, "max_tokens": 8, "temperature": 0})
        assert r.status_code == 200, r.text
        (expected,) = lm.complete([PREFIX], greedy)[0]
        assert r.json()["choices"][0]["text"] == expected.text
        assert r.json()["usage"]["prompt_tokens"] == len(lm.prompt_ids(PREFIX))  # no BOS: nothing before the text
        r = client.post("/infill", json={"input_prefix": PREFIX, "input_suffix": SUFFIX, "n_predict": 8,
                                         "temperature": 0})
        assert r.status_code == 200, r.text
        (middle,) = lm.infill([PREFIX], [SUFFIX], greedy)[0]
        assert r.json()["content"] == middle.text and r.json()["mode"] == "fim"
        assert r.json()["tokens_evaluated"] == len(lm.fim_prompt_ids(PREFIX, SUFFIX))
        # a seeded request with n choices: each choice is the backend's sample of that seed
        r = client.post("/v1/completions", json={"prompt": PREFIX, "max_tokens": 6, "temperature": 1.0, "n": 2,
                                                 "seed": 11})
        sampled = lm.complete([PREFIX], SamplingParams(max_new_tokens=6, temperature=1.0), seeds=[11], n=2)[0]
        assert [c["text"] for c in r.json()["choices"]] == [c.text for c in sampled]
        # streamed text is the same text
        r = client.post("/v1/completions", json={"prompt": PREFIX, "max_tokens": 8, "temperature": 0,
                                                 "stream": True})
        chunks = [line[6:] for line in r.text.splitlines() if line.startswith("data: ") and line != "data: [DONE]"]
        import json
        assert "".join(json.loads(c)["choices"][0]["text"] for c in chunks) == expected.text


def test_a_transformers_model_without_fim_tokens_is_refused_in_one_line(tmp_path):
    from codelm.backends.transformers_lm import TransformersLM
    from web.app import ServeConfig, ServedBackend, create_app
    path = save_model_dir(tmp_path / "qwen2", "qwen2", None, bos=False)
    served = ServedBackend(TransformersLM.load(path, device="cpu"), str(path))
    with TestClient(create_app(served, ServeConfig(max_tokens=8))) as client:
        assert client.post("/v1/completions", json={"prompt": "x = ", "max_tokens": 4}).status_code == 200
        r = client.post("/infill", json={"input_prefix": PREFIX, "input_suffix": SUFFIX, "n_predict": 4})
        assert r.status_code == 400
        message = r.json()["error"]["message"]
        assert "cannot infill" in message and "no FIM tokens" in message and "\n" not in message


@pytest.fixture(scope="module")
def codellama_dir(tmp_path_factory):
    """A tiny Llama-architecture directory whose tokenizer has Code Llama's FIM tokens and a BOS."""
    return save_model_dir(tmp_path_factory.mktemp("codellama"), "llama", "codellama", bos=True)


def test_an_imported_model_infills_with_its_family_s_template(codellama_dir):
    """Served through the codelm backend (converted by codelm/hf.py), the imported model infills with Code Llama's
    template: the family's exact prompt tokens, and the same greedy middle as the transformers backend decodes."""
    from transformers import AutoTokenizer

    from codelm.backends.transformers_lm import TransformersLM
    from codelm.generate import SamplingParams
    from codelm.infill import infill
    from codelm.loader import load_checkpoint
    from codelm.prompts import fim_prompt_text
    from web.app import ServeConfig, create_app
    ckpt = load_checkpoint(codellama_dir, device="cpu")
    assert not ckpt.capabilities["can_fim"]  # never trained by codelm for FIM: the family's template it is
    hf_tok = AutoTokenizer.from_pretrained(codellama_dir)
    family_ids = hf_tok(fim_prompt_text("codellama", PREFIX, SUFFIX), add_special_tokens=True)["input_ids"]
    greedy = SamplingParams(max_new_tokens=8, lookup_draft=0)
    ours = infill(ckpt.model, ckpt.tokenizer, PREFIX, SUFFIX, "fim", greedy, capabilities=ckpt.capabilities)
    (theirs,) = TransformersLM.load(codellama_dir, device="cpu").infill([PREFIX], [SUFFIX], greedy)[0]
    assert ours.best.token_ids == theirs.token_ids
    with TestClient(create_app(ckpt, ServeConfig(max_tokens=16, max_batch=2))) as client:
        r = client.post("/infill", json={"input_prefix": PREFIX, "input_suffix": SUFFIX, "n_predict": 8,
                                         "temperature": 0})
        assert r.status_code == 200, r.text
        assert r.json()["tokens_evaluated"] == len(family_ids)
        assert r.json()["content"] == ours.best.text
        r = client.post("/v1/completions", json={"prompt": PREFIX, "suffix": SUFFIX, "max_tokens": 8,
                                                 "temperature": 0})
        assert r.status_code == 200 and r.json()["mode"] == "fim" and r.json()["choices"][0]["text"] == ours.best.text
        # a client's own rendering of the family's template is honoured as a raw FIM prompt
        raw = fim_prompt_text("codellama", PREFIX, SUFFIX)
        r = client.post("/v1/completions", json={"prompt": raw, "max_tokens": 8, "temperature": 0})
        assert r.json()["mode"] == "fim" and r.json()["choices"][0]["text"] == ours.best.text
        r = client.post("/v1/completions", json={"prompt": PREFIX, "max_tokens": 4, "temperature": 0})
        assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == len(hf_tok(PREFIX)["input_ids"])


def test_an_imported_model_infills_in_the_cli_and_the_evaluation(codellama_dir, capsys):
    from codelm.cli import main
    from evals.models import load_model
    model = load_model(str(codellama_dir), "cpu", backend="codelm")
    (middles,) = model.infill([PREFIX], [SUFFIX], mode="fim", n=2, temperature=1.0, top_p=1.0, max_new_tokens=6,
                              stop=[], seeds=[[1, 2]])
    assert len(middles) == 2
    assert main(["infill", str(codellama_dir), "--prefix", PREFIX, "--suffix", SUFFIX, "--max-new-tokens", "6",
                 "--backend", "codelm", "--json"]) == 0
    assert '"mode": "fim"' in capsys.readouterr().out


def test_codelm_serve_picks_the_backend(starcoder2_fim, codellama_dir, monkeypatch, capsys):
    """`codelm serve DIR`: auto serves an architecture codelm cannot convert with transformers, a Llama directory
    with codelm; --backend transformers forces transformers."""
    import uvicorn

    from codelm.cli import main
    from web.app import ServedBackend
    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.append(app.state.server.ckpt))
    assert main(["serve", starcoder2_fim.path]) == 0
    assert main(["serve", str(codellama_dir)]) == 0
    assert main(["serve", str(codellama_dir), "--backend", "transformers"]) == 0
    assert [isinstance(c, ServedBackend) for c in served] == [True, False, True]

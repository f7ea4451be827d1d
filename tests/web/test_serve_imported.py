"""`codelm serve` on models imported from Hugging Face: a tokenizer with no BOS token (Qwen2.5-Coder, StarCoder have
none) must not put a None into the prompt (every completion answered 500 before)."""

import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: hf_tiny

from hf_tiny import make_model, make_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def no_bos_llama(tmp_path_factory):
    """A tiny Llama-architecture directory whose tokenizer has no BOS token, imported through codelm/hf.py."""
    from codelm.loader import load_checkpoint
    path = tmp_path_factory.mktemp("no-bos-llama")
    tok = make_tokenizer(None, bos=False)
    model = make_model("llama", len(tok.get_vocab()))
    for cfg in (model.config, model.generation_config):  # as Qwen2.5-Coder's: no BOS id anywhere
        cfg.bos_token_id, cfg.eos_token_id = None, tok.eos_token_id
    model.save_pretrained(path)
    tok.save_pretrained(path)
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

"""The HTTP API: OpenAI /v1/completions, llama.cpp /infill, /v1/models, /health, limits and errors."""

from __future__ import annotations

import copy
import json

import httpx
import pytest
from fastapi.testclient import TestClient

from codelm.generate import SamplingParams, generate
from web.app import ServeConfig, create_app
from web_support import live_server, wait_until

PREFIX, SUFFIX = "def add(a, b):\n    ", "\n    return c\n"


@pytest.fixture(scope="module")
def fim_client(fim_mim_ckpt):
    with TestClient(create_app(fim_mim_ckpt, ServeConfig(max_tokens=64, max_batch=4))) as c:
        yield c


@pytest.fixture(scope="module")
def l2r_client(l2r_ckpt):
    with TestClient(create_app(l2r_ckpt, ServeConfig(max_tokens=64, max_batch=4))) as c:
        yield c


def sse_data(text: str) -> list[str]:
    return [line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")]


def complete(client, **body):
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()


# --- discovery ------------------------------------------------------------------------------------------------------
def test_health_reports_the_worker(fim_client):
    body = fim_client.get("/health").json()
    assert body["status"] == "ok" and body["max_batch"] == 4 and "generated_tokens" in body


def test_models_lists_the_model_its_modes_and_template(fim_client, l2r_client):
    (m,) = fim_client.get("/v1/models").json()["data"]
    assert m["infill_modes"] == ["fim", "mim"] and m["context_length"] == 128
    assert m["fim_template"] == "<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>"
    assert m["id"].startswith("codelm-") and m["id"].endswith("-fim") and "qwen" not in m["id"]  # its own name
    (m,) = l2r_client.get("/v1/models").json()["data"]
    assert m["infill_modes"] == [] and m["fim_template"] is None and not m["id"].endswith("-fim")


# --- completions ----------------------------------------------------------------------------------------------------
def reference(ckpt):
    """The model the library reference decodes with: a copy, because the served one belongs to the server's worker
    thread, KV cache included (it may still be tidying its rows after answering)."""
    return copy.deepcopy(ckpt.model)


def test_greedy_completion_is_what_the_library_generates(l2r_client, l2r_ckpt):
    body = complete(l2r_client, prompt="def add(a, b):", max_tokens=12, temperature=0)
    expected = generate(reference(l2r_ckpt), l2r_ckpt.tokenizer, "def add(a, b):", SamplingParams(max_new_tokens=12))
    assert body["object"] == "text_completion" and body["choices"][0]["text"] == expected
    assert body["usage"]["completion_tokens"] == body["timings"]["predicted_tokens"] <= 12
    assert body["timings"]["predicted_ms"] > 0 and body["mode"] == "completion"


def test_streaming_sends_the_same_text_then_done(l2r_client):
    plain = complete(l2r_client, prompt="import os", max_tokens=10, temperature=0)["choices"][0]["text"]
    r = l2r_client.post("/v1/completions", json={"prompt": "import os", "max_tokens": 10, "temperature": 0,
                                                   "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    data = sse_data(r.text)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == plain
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length") and "timings" in chunks[-1]


def test_n_seeded_samples_are_reproducible(l2r_client):
    ask = dict(prompt="class A:", max_tokens=8, temperature=1.0, n=3, seed=7)
    first, again = complete(l2r_client, **ask), complete(l2r_client, **ask)
    assert [c["index"] for c in first["choices"]] == [0, 1, 2]
    assert [c["text"] for c in first["choices"]] == [c["text"] for c in again["choices"]]


def test_echo_logprobs_and_stop(l2r_client):
    body = complete(l2r_client, prompt="x = ", max_tokens=6, temperature=0, echo=True, logprobs=2)
    choice = body["choices"][0]
    assert choice["text"].startswith("x = ")
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) <= 6
    assert all(v <= 0 for v in lp["token_logprobs"]) and all(len(t) <= 2 for t in lp["top_logprobs"])
    full = complete(l2r_client, prompt="x = ", max_tokens=20, temperature=0)["choices"][0]["text"]
    if len(full) > 3:
        stop = full[2:4]
        cut = complete(l2r_client, prompt="x = ", max_tokens=20, temperature=0, stop=[stop])["choices"][0]
        assert cut["text"] == full[:full.index(stop)] and cut["finish_reason"] == "stop"


# --- infilling ------------------------------------------------------------------------------------------------------
def test_fim_infill_is_what_the_library_infills(fim_client, fim_mim_ckpt):
    from codelm.infill import infill
    body = complete(fim_client, prompt=PREFIX, suffix=SUFFIX, max_tokens=10, temperature=0)
    expected = infill(reference(fim_mim_ckpt), fim_mim_ckpt.tokenizer, PREFIX, SUFFIX, "fim",
                      SamplingParams(max_new_tokens=10), capabilities=fim_mim_ckpt.capabilities)
    assert body["mode"] == "fim" and body["choices"][0]["text"] == expected.best.text


def test_mim_infill_is_what_the_library_infills(fim_client, fim_mim_ckpt):
    from codelm.infill import mim_infill
    body = complete(fim_client, prompt=PREFIX, suffix=SUFFIX, max_tokens=10, temperature=0, mode="mim")
    expected = mim_infill(reference(fim_mim_ckpt), fim_mim_ckpt.tokenizer, PREFIX, SUFFIX,
                          SamplingParams(max_new_tokens=10), capabilities=fim_mim_ckpt.capabilities)
    assert body["mode"] == "mim" and body["choices"][0]["text"] == expected.text
    assert body["timings"]["met"] == expected.met


def test_a_raw_prompt_in_the_models_own_template_is_an_infill(fim_mim_ckpt, fim_client):
    raw = f"<|fim_prefix|>{PREFIX}<|fim_suffix|>{SUFFIX}<|fim_middle|>"
    as_raw = complete(fim_client, prompt=raw, max_tokens=8, temperature=0)
    as_suffix = complete(fim_client, prompt=PREFIX, suffix=SUFFIX, max_tokens=8, temperature=0)
    assert as_raw["mode"] == "fim" and as_raw["choices"][0]["text"] == as_suffix["choices"][0]["text"]
    other_family = complete(fim_client, prompt=f"<fim_prefix>{PREFIX}<fim_suffix>{SUFFIX}<fim_middle>", max_tokens=4)
    assert other_family["mode"] == "completion"
    with TestClient(create_app(fim_mim_ckpt, ServeConfig(raw_fim=False))) as off:
        assert complete(off, prompt=raw, max_tokens=4)["mode"] == "completion"


def test_a_model_refuses_modes_it_was_not_trained_for(l2r_client):
    r = l2r_client.post("/v1/completions", json={"prompt": PREFIX, "suffix": SUFFIX})
    assert r.status_code == 400 and "cannot infill" in r.json()["error"]["message"]
    r = l2r_client.post("/v1/completions", json={"prompt": PREFIX, "suffix": SUFFIX, "mode": "mim"})
    assert r.status_code == 400 and "'mim'" in r.json()["error"]["message"]
    assert l2r_client.post("/infill", json={"input_prefix": PREFIX}).status_code == 400


def test_llama_cpp_infill_plain_and_streamed(fim_client):
    body = {"input_prefix": PREFIX, "input_suffix": SUFFIX, "input_extra": [{"filename": "a.py", "text": "import a"}],
            "n_predict": 8, "temperature": 0, "seed": 1}
    r = fim_client.post("/infill", json=body)
    assert r.status_code == 200
    plain = r.json()
    assert plain["stop"] is True and plain["tokens_predicted"] <= 8 and plain["stop_type"] in ("eos", "limit")
    r = fim_client.post("/infill", json={**body, "stream": True})
    chunks = [json.loads(d) for d in sse_data(r.text)]
    assert chunks[-1]["stop"] is True and all(not c["stop"] for c in chunks[:-1])
    assert "".join(c["content"] for c in chunks) == plain["content"]


# --- limits and bad bodies --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("body, param", [
    ({"prompt": "x", "max_tokens": -1}, "max_tokens"),
    ({"prompt": "x", "max_tokens": 65}, "max_tokens"),          # over the server's cap
    ({"prompt": "x", "temperature": 3}, "temperature"),
    ({"prompt": "x", "top_p": 0}, "top_p"),
    ({"prompt": "x", "n": 5}, "n"),                            # over max_batch
    ({"prompt": ["a", "b"]}, "prompt"),
    ({"prompt": "x", "mode": "spm"}, "mode"),
    ({"prompt": "x", "stop": ["a"] * 9}, "stop"),
    ({"prompt": "x" * 200_001}, "prompt"),
])
def test_bad_bodies_get_a_422_naming_the_field(fim_client, body, param):
    r = fim_client.post("/v1/completions", json=body)
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["param"] == param and err["message"].startswith(param)


def test_not_json_and_unknown_fields(fim_client):
    r = fim_client.post("/v1/completions", content=b"{oops", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["error"]["message"]
    assert complete(fim_client, prompt="x", max_tokens=1, frequency_penalty=0.5, user="me")["choices"]
    r = fim_client.post("/infill", json={"input_prefix": "x", "n_predict": 1000})
    assert r.status_code == 422 and r.json()["error"]["param"] == "n_predict"


def test_long_prompts_are_trimmed_to_the_budget(fim_client):
    body = complete(fim_client, prompt="x = 1\n" * 400, suffix="y = 2\n" * 400, max_tokens=2)
    assert body["truncated"] is True and body["usage"]["prompt_tokens"] <= 128


def test_a_full_queue_answers_429(fim_mim_ckpt):
    with TestClient(create_app(fim_mim_ckpt, ServeConfig(max_queue=0))) as c:
        r = c.post("/v1/completions", json={"prompt": "x"})
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert "busy" in r.json()["error"]["message"]


def test_api_key_and_cors(fim_mim_ckpt, fim_client):
    assert "access-control-allow-origin" not in fim_client.options(
        "/v1/completions", headers={"Origin": "http://evil.test", "Access-Control-Request-Method": "POST"}).headers
    config = ServeConfig(api_key="s3cret", cors_origins=["http://editor.test"])
    with TestClient(create_app(fim_mim_ckpt, config)) as c:
        assert c.post("/v1/completions", json={"prompt": "x", "max_tokens": 1}).status_code == 401
        ok = c.post("/v1/completions", json={"prompt": "x", "max_tokens": 1},
                    headers={"Authorization": "Bearer s3cret", "Origin": "http://editor.test"})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "http://editor.test"
        assert c.get("/v1/models", headers={"X-API-Key": "wrong"}).status_code == 401
        assert c.get("/health").status_code == 200 and c.get("/").status_code == 200


# --- a client going away, against a real server ------------------------------------------------------------------------
def test_a_non_streaming_client_that_goes_away_stops_its_generation(random_ckpt):
    app = create_app(random_ckpt, ServeConfig(max_tokens=1000))
    engine = app.state.engine
    with live_server(app) as url:
        body = {"prompt": "def", "max_tokens": 1000, "temperature": 0}
        with httpx.Client(base_url=url, timeout=httpx.Timeout(60, read=0.5)) as client:
            with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes its connection
                client.post("/v1/completions", json=body)
        assert wait_until(lambda: engine.cancelled_rows == 1 and engine.active_rows == 0)
        stopped_at = engine.generated_tokens
        assert stopped_at < 1000
        assert wait_until(lambda: engine.generated_tokens == stopped_at, timeout=1.0)  # and stays stopped


def test_a_client_that_goes_away_stops_its_generation(random_ckpt):
    app = create_app(random_ckpt, ServeConfig(max_tokens=1000))
    engine = app.state.engine
    with live_server(app) as url:
        with httpx.Client(base_url=url, timeout=60) as client:
            body = {"prompt": "def", "max_tokens": 1000, "temperature": 0, "stream": True}
            with client.stream("POST", "/v1/completions", json=body) as r:
                lines = r.iter_lines()
                while not next(lines).startswith("data: "):
                    pass
                assert wait_until(lambda: engine.active_rows == 1)  # generating while the client reads
            # the response is closed: the worker must drop the row, not finish its 1000 tokens
            assert wait_until(lambda: engine.cancelled_rows == 1 and engine.active_rows == 0)
            stopped_at = engine.generated_tokens
            assert stopped_at < 1000
            assert wait_until(lambda: engine.generated_tokens == stopped_at, timeout=1.0)  # and stays stopped

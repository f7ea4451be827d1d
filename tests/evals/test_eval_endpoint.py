"""Evaluating a model behind an OpenAI-compatible completions API: a fake server on 127.0.0.1 answers with the
canonical solutions and fails some requests with 429/500, which the client must retry."""

import json
import socket
import threading
import time

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from evals import humaneval, infilling
from evals.cli import main
from evals.data import EvalInputError
from evals.endpoint import EndpointModel, completions_url

TASKS = ["HumanEval/0", "HumanEval/1", "HumanEval/2", "HumanEval/3"]


def fake_openai_app(answers: dict, log: list) -> FastAPI:
    """POST /v1/completions: the canonical answer for the prompt (or prompt+suffix). Every request whose seed is
    odd is first refused with 429 and then with 500; an unknown prompt gets 'pass'."""
    app = FastAPI()
    refused = {}

    @app.post("/v1/completions")
    async def completions(body: dict):
        log.append(body)
        key = (body["prompt"], body.get("suffix"))
        attempt = key + (body.get("seed", 0),)
        if attempt[-1] % 2 and refused.get(attempt, 0) < 2:
            refused[attempt] = refused.get(attempt, 0) + 1
            status = 429 if refused[attempt] == 1 else 500
            return JSONResponse({"error": "busy"}, status_code=status, headers={"retry-after": "0"})
        text = answers.get(key, "    pass\n")
        return {"id": "cmpl-1", "object": "text_completion", "model": body["model"],
                "choices": [{"index": 0, "text": text, "finish_reason": "stop"}]}

    return app


@pytest.fixture
def serve():
    servers = []

    def start(app) -> str:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.01)
        servers.append((server, thread))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/v1"

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=10)


def test_humaneval_through_an_endpoint_with_retries(serve, tmp_path):
    bench = humaneval.load()
    answers = {(bench.problems[t]["prompt"], None): bench.problems[t]["canonical_solution"] for t in TASKS}
    log = []
    url = serve(fake_openai_app(answers, log))
    out = tmp_path / "eval"
    code = main(["eval", "humaneval", "--endpoint", url, "--model", "fake-coder", "--tasks", ",".join(TASKS),
                 "-k", "1,2", "--n", "2", "--temperature", "0.8", "--concurrency", "3", "--output", str(out)])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pass@1"] == 1.0 and summary["counts"]["samples"] == 8
    assert summary["protocol"]["model"] == f"fake-coder@{url}"
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    odd = sum(1 for s in samples if s["seed"] % 2)
    assert odd > 0 and len(log) == 8 + 2 * odd  # each odd-seeded request was refused twice, then answered
    assert all(b["model"] == "fake-coder" and b["n"] == 1 and b["temperature"] == 0.8 for b in log)
    assert all(b["stop"] == humaneval.STOP[:4] for b in log)


def test_infilling_sends_suffix_or_a_raw_fim_template(serve):
    bench = infilling.load("random-span-light")
    problems = [bench.problems[t] for t in list(bench.problems)[:2]]
    log = []
    answers = {(p["prompt"], p["suffix"]): p["canonical_solution"] for p in problems}
    url = serve(fake_openai_app(answers, log))
    model = EndpointModel(url, "m", backoff_s=0.0)
    out = model.infill([p["prompt"] for p in problems], [p["suffix"] for p in problems], mode="fim", n=1,
                       temperature=0.0, top_p=1.0, max_new_tokens=64, stop=[], seeds=[[0], [2]])
    assert out == [[p["canonical_solution"]] for p in problems]
    templated = EndpointModel(url, "m", fim_template="<PRE>{prefix}<SUF>{suffix}<MID>")
    templated.infill(["a"], ["b"], mode="fim", n=1, temperature=0.0, top_p=1.0, max_new_tokens=8, stop=[],
                     seeds=[[0]])
    assert log[-1]["prompt"] == "<PRE>a<SUF>b<MID>" and "suffix" not in log[-1]
    with pytest.raises(EvalInputError, match="mode fim"):
        model.infill(["a"], ["b"], mode="mim", n=1, temperature=0.0, top_p=1.0, max_new_tokens=8, stop=[],
                     seeds=[[0]])


def test_errors_a_user_causes_are_one_line(serve):
    app = FastAPI()

    @app.post("/v1/completions")
    async def missing_model(body: dict):
        return JSONResponse({"error": "model not found"}, status_code=404)

    url = serve(app)
    with pytest.raises(EvalInputError, match="HTTP 404"):
        EndpointModel(url, "nope").complete(["x"], n=1, temperature=0.0, top_p=1.0, max_new_tokens=4, stop=[],
                                            seeds=[[0]])
    with pytest.raises(EvalInputError, match="http"):
        EndpointModel("localhost:1", "m")
    assert completions_url("http://h/v1/") == "http://h/v1/completions"
    assert completions_url("http://h/v1/completions") == "http://h/v1/completions"

"""A CompletionModel behind an OpenAI-compatible completions endpoint: vLLM, llama.cpp's server, TGI, or `codelm serve`.

  codelm eval humaneval --endpoint http://127.0.0.1:8000/v1 --model NAME [--concurrency 8] [--rate-limit 5]

Each sample is one POST to {endpoint}/completions with {model, prompt, max_tokens, temperature, top_p, n: 1, stop,
seed}: one request per sample so that every sample keeps its own seed (servers that honour `seed` then reproduce a
run exactly). Infilling (mode "fim") sends `suffix` (OpenAI's and codelm's field; vLLM and llama.cpp's /v1 ignore
it for some models), or, with --fim-template, a raw prompt such as "<PRE> {prefix} <SUF>{suffix} <MID>" (CodeLlama)
or "<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>" (StarCoder, Qwen). Meet-in-the-middle needs the
model's two directions and is not available through this API.

Requests run on a thread pool (--concurrency). 429s, 5xxs and connection errors are retried with exponential backoff
(honouring Retry-After); other errors are the user's (bad URL, unknown model) and end the run with one line.
--rate-limit caps requests per second across all threads. The API key, if any, comes from $OPENAI_API_KEY.
"""

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from evals.data import EvalInputError

RETRY_STATUSES = {408, 409, 429, 500, 502, 503, 504}


class RateLimiter:
    """At most `per_second` request starts per second, shared by all threads (None: no limit)."""

    def __init__(self, per_second: float | None):
        self.interval = 1.0 / per_second if per_second else 0.0
        self.next_start = 0.0
        self.lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next_start)
            self.next_start = start + self.interval
        time.sleep(max(0.0, start - now))


def completions_url(endpoint: str) -> str:
    """http://host/v1 -> http://host/v1/completions; a URL already ending in /completions is kept."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/completions") else endpoint + "/completions"


class EndpointModel:
    backend = "endpoint"

    def __init__(self, endpoint: str, model: str, *, concurrency: int = 4, retries: int = 6,
                 rate_limit: float | None = None, fim_template: str | None = None, timeout_s: float = 300.0,
                 backoff_s: float = 0.5):
        if not endpoint.startswith(("http://", "https://")):
            raise EvalInputError(f"--endpoint must be an http(s) URL, got {endpoint!r}")
        if fim_template is not None and ("{prefix}" not in fim_template or "{suffix}" not in fim_template):
            raise EvalInputError("--fim-template must contain {prefix} and {suffix}")
        self.url = completions_url(endpoint)
        self.model = model
        self.name = f"{model}@{endpoint}"
        self.concurrency = concurrency
        self.retries = retries
        self.backoff_s = backoff_s
        self.fim_template = fim_template
        self.limiter = RateLimiter(rate_limit)
        headers = {"Authorization": f"Bearer {os.environ['OPENAI_API_KEY']}"} if os.environ.get("OPENAI_API_KEY") \
            else {}
        self.client = httpx.Client(timeout=timeout_s, headers=headers)
        self.capabilities = {}

    def complete(self, prompts, *, n, temperature, top_p, max_new_tokens, stop, seeds):
        requests = [[{"prompt": p, "seed": s} for s in task_seeds] for p, task_seeds in zip(prompts, seeds)]
        return self._run(requests, temperature, top_p, max_new_tokens, stop)

    def infill(self, prefixes, suffixes, *, mode, n, temperature, top_p, max_new_tokens, stop, seeds):
        if mode != "fim":
            raise EvalInputError(f"an endpoint model can only infill with mode fim, not {mode!r}")
        requests = []
        for prefix, suffix, task_seeds in zip(prefixes, suffixes, seeds):
            if self.fim_template is None:
                fields = {"prompt": prefix, "suffix": suffix}
            else:
                fields = {"prompt": self.fim_template.replace("{prefix}", prefix).replace("{suffix}", suffix)}
            requests.append([dict(fields, seed=s) for s in task_seeds])
        return self._run(requests, temperature, top_p, max_new_tokens, stop)

    def _run(self, requests, temperature, top_p, max_new_tokens, stop) -> list[list[str]]:
        common = {"model": self.model, "max_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p,
                  "n": 1}
        if stop:
            common["stop"] = list(stop)[:4]  # OpenAI's API accepts at most 4; the benchmark truncates at all of them
        flat = [(i, j, {**common, **fields}) for i, row in enumerate(requests) for j, fields in enumerate(row)]
        out = [[""] * len(row) for row in requests]
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="endpoint") as pool:
            for (i, j, _), text in zip(flat, pool.map(lambda item: self._post(item[2]), flat)):
                out[i][j] = text
        return out

    def _post(self, payload: dict) -> str:
        """One completion, retried on rate limits, server errors and dropped connections."""
        for attempt in range(self.retries + 1):
            self.limiter.wait()
            try:
                response = self.client.post(self.url, json=payload)
            except httpx.TransportError as e:
                if attempt == self.retries:
                    raise EvalInputError(f"{self.url}: {type(e).__name__}: {e}") from None
                time.sleep(self._backoff(attempt))
                continue
            if response.status_code == 200:
                choices = response.json().get("choices") or []
                if not choices or not isinstance(choices[0].get("text"), str):
                    raise EvalInputError(f"{self.url}: response has no choices[0].text")
                return choices[0]["text"]
            if response.status_code not in RETRY_STATUSES or attempt == self.retries:
                raise EvalInputError(f"{self.url}: HTTP {response.status_code}: {response.text[:200]!r}")
            time.sleep(self._backoff(attempt, response.headers.get("retry-after")))
        raise AssertionError("unreachable")

    def _backoff(self, attempt: int, retry_after: str | None = None) -> float:
        if retry_after is not None:
            try:
                return min(60.0, float(retry_after))
            except ValueError:
                pass
        return min(30.0, self.backoff_s * 2 ** attempt)

"""Load test of the infill server on loopback: N concurrent streaming clients for a fixed time.

    python benchmarks/bench_serve.py [CHECKPOINT] [--clients 32] [--seconds 30] [--max-tokens 32]

Starts a real uvicorn server on 127.0.0.1 in this process (a random micro model when no checkpoint is given), runs
`clients` streaming clients that each send infill/completion requests back to back until `seconds` pass (bounded in
time, and in count by --max-requests), then reports goodput (share of requests served, tokens/s), p50/p95 latency,
time to first text, the number of 429 answers and the process RSS before and after. The reference measured in the
same run is one client alone: batching shows as aggregate tokens/s against it. Numbers on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import httpx

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path[:0] = [str(TESTS / "web"), str(TESTS)]  # web_support (random model), support (loopback server)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def one_request(client: httpx.AsyncClient, body: dict, stats: dict) -> None:
    t0 = time.perf_counter()
    first = None
    tokens = 0
    async with client.stream("POST", "/v1/completions", json=body) as r:
        if r.status_code == 429:
            stats["429"] += 1
            await r.aread()
            await asyncio.sleep(float(r.headers.get("retry-after", 1)))  # back off as told, like a polite client
            return
        if r.status_code != 200:
            stats["errors"] += 1
            await r.aread()
            return
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if first is None and chunk["choices"][0]["text"]:
                first = time.perf_counter() - t0
            if chunk.get("timings"):
                tokens = chunk["timings"]["predicted_tokens"]
    stats["latency"].append(time.perf_counter() - t0)
    stats["first"].append(first if first is not None else time.perf_counter() - t0)
    stats["tokens"] += tokens
    stats["served"] += 1


async def client_loop(url: str, body: dict, deadline: float, stats: dict, budget: list[int]) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        while time.perf_counter() < deadline and budget[0] > 0:
            budget[0] -= 1
            stats["sent"] += 1
            await one_request(client, body, stats)


async def run_load(url: str, clients: int, seconds: float, body: dict, max_requests: int) -> dict:
    stats = {"sent": 0, "served": 0, "429": 0, "errors": 0, "tokens": 0, "latency": [], "first": []}
    t0 = time.perf_counter()
    budget = [max_requests]
    await asyncio.gather(*(client_loop(url, body, t0 + seconds, stats, budget) for _ in range(clients)))
    stats["wall_s"] = time.perf_counter() - t0
    return stats


def summary(name: str, s: dict) -> dict:
    q = lambda xs, p: statistics.quantiles(xs, n=100)[p - 1] if len(xs) >= 2 else (xs[0] if xs else float("nan"))
    out = {"run": name, "requests_sent": s["sent"], "served": s["served"], "http_429": s["429"],
           "errors": s["errors"], "goodput_share": s["served"] / max(1, s["sent"]),
           "tokens_per_s": s["tokens"] / s["wall_s"], "requests_per_s": s["served"] / s["wall_s"],
           "latency_p50_s": q(s["latency"], 50), "latency_p95_s": q(s["latency"], 95),
           "first_text_p50_s": q(s["first"], 50), "wall_s": s["wall_s"]}
    print(f"{name:>12s}: {out['served']}/{out['requests_sent']} served ({out['goodput_share']:.0%}), "
          f"{out['http_429']} x 429, {out['tokens_per_s']:.0f} tokens/s, latency p50 {out['latency_p50_s']:.3f} s "
          f"p95 {out['latency_p95_s']:.3f} s, first text p50 {out['first_text_p50_s']:.3f} s", flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", nargs="?", help="checkpoint or run directory (default: a random micro model)")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--max-requests", type=int, default=5000, help="bound on requests in all")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--max-queue", type=int, default=8)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)

    from codelm.checkpoint import save_checkpoint
    from codelm.loader import load_checkpoint
    from codelm.tokenizer import get_tokenizer
    from web.app import ServeConfig, create_app
    from web_support import live_server, random_model

    rss_start = rss_mb()
    if args.checkpoint:
        ckpt = load_checkpoint(args.checkpoint)
    else:
        import tempfile
        path = save_checkpoint(Path(tempfile.mkdtemp()) / "random", random_model(context_length=256),
                               get_tokenizer("cl100k_base:16384"))
        ckpt = load_checkpoint(path)
    app = create_app(ckpt, ServeConfig(max_batch=args.max_batch, max_queue=args.max_queue,
                                       max_tokens=args.max_tokens))
    body = {"prompt": "def fibonacci(n):\n    ", "max_tokens": args.max_tokens, "temperature": 0.8, "top_p": 0.95,
            "stream": True}
    if (ckpt.capabilities or {}).get("can_fim"):
        body["suffix"] = "\n\nprint(fibonacci(10))\n"
    results = {"checkpoint": str(ckpt.path), "clients": args.clients, "seconds": args.seconds,
               "max_batch": args.max_batch, "max_queue": args.max_queue, "max_tokens": args.max_tokens}
    with live_server(app) as url:
        rss_before = rss_mb()
        reference = asyncio.run(run_load(url, 1, min(5.0, args.seconds), body, 200))
        results["one_client"] = summary("1 client", reference)
        load = asyncio.run(run_load(url, args.clients, args.seconds, body, args.max_requests))
        results["load"] = summary(f"{args.clients} clients", load)
        rss_after = rss_mb()
        results["engine"] = app.state.engine.stats()
    results["rss_mb"] = {"process_start": rss_start, "before_load": rss_before, "after_load": rss_after}
    ratio = results["load"]["tokens_per_s"] / max(results["one_client"]["tokens_per_s"], 1e-9)
    results["tokens_per_s_ratio_vs_one_client"] = ratio
    print(f"aggregate tokens/s vs one client: {ratio:.2f}x; RSS before {rss_before:.0f} MB, after {rss_after:.0f} MB "
          f"(shared machine: numbers are noisy)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

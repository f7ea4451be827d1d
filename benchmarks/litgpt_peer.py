"""litgpt's own model trained one step at a time, as a peer for bench_train.py --peers (run by it, one process per
variant, in the benchmark environment: `make bench-env`; litgpt pins a huggingface-hub that the main environment's
transformers does not accept, so it lives apart).

    .venv-bench/bin/python benchmarks/litgpt_peer.py '{"n_layer": 6, "n_head": 6, "n_embd": 384, "block_size": 256,
        "vocab_size": 8256, "intermediate_size": 1024, "batch": 8, "steps": 6, "precision": "bf16", "compile": true}'

Prints one JSON row: the best step's tokens/s (window tokens, as bench_train counts codelm's) and the first step's
seconds (compilation included). The model is litgpt's Llama block (RMSNorm, rotary, SwiGLU, no biases): the shape
codelm's default block has, so FLOPs per token are equal.
"""

from __future__ import annotations

import json
import resource
import sys
import time

import torch
import torch.nn.functional as F
from litgpt.config import Config
from litgpt.model import GPT


def main(spec: dict) -> dict:
    torch.manual_seed(0)
    config = Config(block_size=spec["block_size"], vocab_size=spec["vocab_size"],
                    padded_vocab_size=spec["vocab_size"], n_layer=spec["n_layer"], n_head=spec["n_head"],
                    n_embd=spec["n_embd"], rotary_percentage=1.0, parallel_residual=False, bias=False,
                    norm_class_name="RMSNorm", mlp_class_name="LLaMAMLP", intermediate_size=spec["intermediate_size"])
    model = GPT(config)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    forward = torch.compile(model) if spec["compile"] else model
    bf16 = spec["precision"] == "bf16"
    B, T, V = spec["batch"], spec["block_size"], spec["vocab_size"]
    gen = torch.Generator().manual_seed(0)

    def step():
        tokens = torch.randint(0, V, (B, T + 1), generator=gen)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = forward(tokens[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, V), tokens[:, 1:].reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    t0 = time.perf_counter()
    step()  # warm-up: compilation, allocator
    first = time.perf_counter() - t0
    best = float("inf")
    for _ in range(spec["steps"]):
        t0 = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - t0)
    return {"tok_s": B * T / best, "first_step_s": first,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))

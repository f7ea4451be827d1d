"""Editor completion through llama.cpp's own server: a FIM-trained codelm model, exported to GGUF, served by
`llama-server` on 127.0.0.1, answers llama.vim's `/infill` request (input_prefix, prompt, input_suffix, input_extra)
with the middle codelm decodes greedily from the same context.

llama-server is built from the llama.cpp source that llama-cpp-python's sdist vendors (.ci/llama_setup.sh installs it
as .venv/bin/llama-server; CODELM_LLAMA_SERVER names another binary). Without it these tests skip with that reason."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch

pytest.importorskip("gguf", reason="the `gguf` package is not installed (pip install 'codelm[gguf]')")

from support import free_port, make_shards, micro_train_config, wait_until  # noqa: E402

from codelm.cli import main  # noqa: E402
from codelm.generate import SamplingParams, decode_batch  # noqa: E402
from codelm.gguf import export_gguf  # noqa: E402
from codelm.tokenizer import get_tokenizer  # noqa: E402

pytestmark = pytest.mark.slow

FUNCTIONS = [
    "def clamp_value(value, lower, upper):\n    if value < lower:\n        return lower\n"
    "    if value > upper:\n        return upper\n    return value\n",
    "def count_vowels(text):\n    total = 0\n    for letter in text.lower():\n        if letter in \"aeiou\":\n"
    "            total += 1\n    return total\n",
    "def merge_dicts(first, second):\n    merged = dict(first)\n    for key, item in second.items():\n"
    "        merged[key] = merged.get(key, 0) + item\n    return merged\n",
]
VOCABULARY = "cl100k_base:2048"
N_PREDICT = 24
EXTRA = [{"filename": "helpers.py", "text": "def helper(x):\n    return x * 2\n"}]


def find_llama_server() -> str | None:
    for candidate in (os.environ.get("CODELM_LLAMA_SERVER"), str(Path(sys.prefix) / "bin" / "llama-server"),
                      shutil.which("llama-server")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="module")
def fim_model(tmp_path_factory):
    """A micro model trained on FIM only (PSM and SPM, cuts at line starts) until it has memorised FUNCTIONS, and its
    f32 GGUF export."""
    from codelm.loader import load_checkpoint
    from codelm.train import Trainer

    server = find_llama_server()
    if server is None:
        pytest.skip("llama-server is not built (.ci/llama_setup.sh builds it from llama-cpp-python's vendored "
                    "llama.cpp; or set CODELM_LLAMA_SERVER)")
    root = tmp_path_factory.mktemp("gguf-fim")
    shards = make_shards(root / "shards", FUNCTIONS * 4, get_tokenizer(VOCABULARY), val_texts=FUNCTIONS)
    cfg = micro_train_config(shards, root / "run", steps=300, objective="fim", fim_rate=1.0, fim_split="line",
                             batch_size=8, context_length=128, lr=5e-3, warmup_steps=20, threads=1, log_every=100,
                             model=dict(n_layer=3, n_head=4, d_model=128, context_length=128, tokenizer=VOCABULARY))
    threads = torch.get_num_threads()
    try:
        Trainer(cfg).fit()
    finally:
        torch.set_num_threads(threads)
    ckpt = load_checkpoint(root / "run")
    return server, root / "run", ckpt, export_gguf(ckpt, root / "model.gguf", "f32")


class LlamaServer:
    def __init__(self, binary: str, model: Path, n_ctx: int, n_batch: int, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.proc = subprocess.Popen(
            [binary, "-m", str(model), "--host", "127.0.0.1", "--port", str(self.port), "-c", str(n_ctx),
             "-b", str(n_batch), "-ub", str(n_batch), "-t", "1", "-np", "1", "--no-webui"],
            stdout=log.open("wb"), stderr=subprocess.STDOUT)

    def __enter__(self):
        def ready():
            if self.proc.poll() is not None:
                return True
            try:
                return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False
        assert wait_until(ready, timeout=120, interval=0.2) and self.proc.poll() is None, self.log.read_text()[-3000:]
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def infill(self, prefix: str, prompt: str, suffix: str) -> dict:
        """llama.vim's request body (its fields; greedy through top-k 1, time limits generous for a loaded CI)."""
        body = {"id_slot": 0, "input_prefix": prefix, "input_suffix": suffix, "input_extra": EXTRA, "prompt": prompt,
                "n_predict": N_PREDICT, "stop": [], "n_indent": 0, "top_k": 1, "top_p": 0.99,
                "samplers": ["top_k", "top_p", "infill"], "stream": False, "cache_prompt": True,
                "t_max_prompt_ms": 60_000, "t_max_predict_ms": 60_000}
        r = httpx.post(f"{self.url}/infill", json=body, timeout=120)
        assert r.status_code == 200, r.text
        return r.json()


def cases():
    """(prefix, prompt, suffix, middle) as llama.vim sends them (the lines above the cursor, the cursor line up to the
    cursor, the rest of the cursor line and the lines below) with the cursor at the start of the line after a
    missing one: the middle is that line. (A prompt ending in indentation is not used: tiktoken's regex keeps a
    text's trailing "\n" + spaces as one piece, where llama.cpp tokenizes prefix and prompt apart; see
    codelm/gguf.py.)"""
    out = []
    for text, line in ((0, 2), (1, 4), (2, 3)):
        lines = FUNCTIONS[text].splitlines(keepends=True)
        out.append(("".join(lines[:line]), "", "".join(lines[line + 1:]), lines[line]))
    return out


def codelm_greedy(ckpt, context: list[int]) -> str:
    done = decode_batch(ckpt.model, ckpt.tokenizer, [context], SamplingParams(max_new_tokens=N_PREDICT), [None])
    return done[0][0].text


def test_llama_server_infill_with_extra_context_equals_codelm_on_the_same_tokens(fim_model, tmp_path):
    """llama.cpp builds `<extra context tail> <BOS> <PRE> prefix prompt <SUF> suffix <MID>`: the tail of the editor's
    snippets (llama.cpp's separator + text) takes the room its formula leaves, n_ctx - n_batch - 2 * the server's
    n_predict (-1 by default, so 2 tokens here; the slot's n_ctx is capped at the model's 128). codelm decodes exactly
    that context (checked against the prompt the server echoes) and gives the same middle."""
    server, _, ckpt, gguf_file = fim_model
    tok = ckpt.tokenizer
    chunk = tok.encode("\n\n--- snippet ---\n\n") + tok.encode(EXTRA[0]["text"])
    with LlamaServer(server, gguf_file, n_ctx=128, n_batch=128, log=tmp_path / "server.log") as srv:
        for prefix, prompt, suffix, _ in cases():
            reply = srv.infill(prefix, prompt, suffix)
            core = [tok.l2r_id, tok.fim_prefix_id] + tok.encode(prefix) + tok.encode(prompt) + \
                [tok.fim_suffix_id] + tok.encode(suffix) + [tok.fim_middle_id]
            take = reply["tokens_evaluated"] - len(core)
            assert 0 < take <= len(chunk), reply
            context = chunk[-take:] + core
            assert reply["prompt"] == tok.decode_with_specials(context)
            assert reply["content"] == codelm_greedy(ckpt, context), (prefix, prompt)


def test_llama_server_infill_equals_codelm_infill_cli(fim_model, tmp_path, capsys):
    """The middle llama.cpp's server returns for llama.vim's request equals `codelm infill --mode fim` on the same
    prefix and suffix (whose prompt differs only around the document start: codelm opens a whole file's prefix with
    end-of-text, llama.cpp with the snippet tail), and it is the memorised line."""
    server, run, ckpt, gguf_file = fim_model
    with LlamaServer(server, gguf_file, n_ctx=128, n_batch=128, log=tmp_path / "server.log") as srv:
        for prefix, prompt, suffix, middle in cases():
            reply = srv.infill(prefix, prompt, suffix)
            assert main(["infill", str(run), "--mode", "fim", "--prefix", prefix + prompt, "--suffix", suffix,
                         "--max-new-tokens", str(N_PREDICT), "--json", "true"]) == 0
            ours = json.loads(capsys.readouterr().out)["middle"]
            assert reply["content"] == ours == middle, (prefix, prompt)

"""`codelm serve` options: one dataclass, read by the command line (codelm/config.py) and by the app.

Free of torch and FastAPI: the command line imports it to build `codelm serve --help`.
"""

from __future__ import annotations

from dataclasses import dataclass

from codelm.config import option
from codelm.terms import COMPILE_HELP, COMPILE_SETTINGS


@dataclass
class ServeConfig:
    checkpoint: str = option("", "checkpoint directory or run directory (its latest checkpoint)", positional=True)
    host: str = option("127.0.0.1", "address to listen on (127.0.0.1: this machine only; 0.0.0.0 inside a "
                                    "container)")
    port: int = option(8000, "port")
    device: str = option("cpu", "torch device (cpu, cuda, cuda:N; the transformers backend also takes auto)")
    backend: str = option("auto", "codelm (codelm checkpoints, Llama-architecture HF dirs: continuous batching) or "
                                  "transformers (any AutoModelForCausalLM, one request at a time); auto picks codelm "
                                  "for what it loads", choices=("auto", "codelm", "transformers"))
    dtype: str = option("auto", "transformers backend: auto, float32, bfloat16, float16")
    compile: str = option("auto", "codelm backend: " + COMPILE_HELP, choices=COMPILE_SETTINGS)
    trust_remote_code: bool = option(False, "transformers backend: run the code a model directory ships")
    max_batch: int = option(8, "rows decoded together per step")
    max_queue: int = option(32, "waiting requests before answering 429")
    max_tokens: int = option(256, "cap on max_tokens / n_predict")
    max_prompt_tokens: int = option(0, "prompt token budget; longer inputs are trimmed away from the cursor "
                                       "(0: the model's context length minus room for 16 new tokens)")
    api_key: str | None = option(None, "require `Authorization: Bearer KEY` (or `X-API-Key`) on API routes (or set "
                                       "CODELM_API_KEY)", metavar="KEY")
    cors_origins: list[str] = option([], "allow browser pages from ORIGIN to call the API (repeatable; default: "
                                         "none, so browsers block other origins)", flag="--cors-origin", repeat=True,
                                     metavar="ORIGIN")
    raw_fim: bool = option(True, "honour a prompt that is this model's own FIM template filled in (--no-raw-fim: "
                                 "treat it as plain text)")
    model_id: str | None = option(None, "id reported by /v1/models (default codelm-<run>[-fim])")

"""`codelm serve CHECKPOINT`: the infill API and playground on one port.

The module top stays free of torch and FastAPI (the codelm CLI imports it to build its parser); the command imports
the app when it runs.
"""

from __future__ import annotations

import argparse


def add_serve_parser(subparsers) -> None:
    p = subparsers.add_parser("serve", help="serve the infill API and the browser playground",
                              description="Serve a checkpoint: OpenAI /v1/completions (with suffix), llama.cpp "
                                          "/infill, /v1/models, /health, and the playground at /.")
    p.add_argument("checkpoint", help="checkpoint directory or run directory (its latest checkpoint)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                                                       "only; 0.0.0.0 inside a container)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--max-batch", type=int, default=8, help="rows decoded together per step (default 8)")
    p.add_argument("--max-queue", type=int, default=32, help="waiting requests before answering 429 (default 32)")
    p.add_argument("--max-tokens", type=int, default=256, help="cap on max_tokens / n_predict (default 256)")
    p.add_argument("--max-prompt-tokens", type=int, default=0,
                   help="prompt token budget; longer inputs are trimmed away from the cursor (default: context - 16)")
    p.add_argument("--api-key", default=None, help="require `Authorization: Bearer KEY` on API routes "
                                                   "(or set CODELM_API_KEY)")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="allow browser pages from ORIGIN to call the API (repeatable; default: none)")
    p.add_argument("--no-raw-fim", dest="raw_fim", action="store_false",
                   help="treat a prompt containing this model's FIM sentinels as plain text")
    p.add_argument("--model-id", default=None, help="id reported by /v1/models (default codelm-<run>[-fim])")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    import uvicorn

    from codelm.checkpoint import load_checkpoint
    from codelm.errors import UserError
    from web.app import ServeConfig, create_app

    for name in ("max_batch", "max_queue", "max_tokens"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not 0 < args.port < 65536:
        raise UserError(f"--port must be in 1..65535, got {args.port}")
    ckpt = load_checkpoint(args.checkpoint, device=args.device)
    config = ServeConfig(max_batch=args.max_batch, max_queue=args.max_queue, max_tokens=args.max_tokens,
                         max_prompt_tokens=args.max_prompt_tokens,
                         api_key=args.api_key or os.environ.get("CODELM_API_KEY") or None,
                         cors_origins=args.cors_origin, raw_fim=args.raw_fim, model_id=args.model_id)
    app = create_app(ckpt, config)
    print(f"codelm: serving {ckpt.path} on http://{args.host}:{args.port}/ (playground at /, API at /v1)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0

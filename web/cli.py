"""`codelm serve CHECKPOINT`: the infill API and playground on one port.

The options are web/config.py's ServeConfig. The module top stays free of torch and FastAPI (the codelm CLI imports
it to build its parser); the command imports the app when it runs.
"""

from __future__ import annotations

import argparse

from codelm.config import add_options_command
from web.config import ServeConfig

DESCRIPTION = ("Serve a checkpoint: OpenAI /v1/completions (with suffix), llama.cpp /infill, /v1/models, /health, "
               "and the playground at /.")


def add_serve_parser(subparsers) -> None:
    configure_serve_parser(subparsers.add_parser("serve", help="serve the infill API and the browser playground"))


def configure_serve_parser(p: argparse.ArgumentParser) -> None:
    p.description = DESCRIPTION
    add_options_command(p, ServeConfig, cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    import dataclasses
    import os

    from codelm.config import resolve_config
    from codelm.errors import UserError

    config = resolve_config(ServeConfig, args, args.config)
    for name in ("max_batch", "max_queue", "max_tokens"):
        if getattr(config, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(config, name)}")
    if not 0 < config.port < 65536:
        raise UserError(f"--port must be in 1..65535, got {config.port}")
    if not config.checkpoint:
        raise UserError("give a CHECKPOINT (a checkpoint or run directory)")
    config = dataclasses.replace(config, api_key=config.api_key or os.environ.get("CODELM_API_KEY") or None)

    import uvicorn

    from codelm.backends import auto_backend
    from web.app import ServedBackend, create_app

    if (config.backend if config.backend != "auto" else auto_backend(config.checkpoint)) == "transformers":
        from codelm.backends.transformers_lm import TransformersLM
        lm = TransformersLM.load(config.checkpoint, device=config.device, dtype=config.dtype,
                                 trust_remote_code=config.trust_remote_code)
        ckpt = ServedBackend(lm, config.checkpoint)
    else:
        from codelm.loader import load_checkpoint
        from codelm.compiled import apply_compile_setting
        ckpt = load_checkpoint(config.checkpoint, device=config.device)
        apply_compile_setting(ckpt.model, config.compile)
    app = create_app(ckpt, config)
    print(f"codelm: serving {ckpt.path} on http://{config.host}:{config.port}/ (playground at /, API at /v1)",
          flush=True)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning")
    return 0

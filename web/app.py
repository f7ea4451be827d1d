"""The routes: an infill API in the shapes editors already speak, and the playground page.

    POST /v1/completions   OpenAI's completions (prompt + suffix = infill; stream = server-sent events)
    POST /infill           llama.cpp's infill (llama.vim, llama.vscode)
    GET  /v1/models        the served model, its capabilities and FIM template
    GET  /health           liveness plus the worker's counters
    GET  /                 the playground (web/static/)

One `Engine` (web/engine.py) owns the model and batches the decode steps of all requests. User mistakes get 4xx
JSON in OpenAI's error shape `{"error": {"message", "type", "param"}}`: 422 for a bad body, 400 for a mode the
model was never trained for, 401 for a missing API key, 429 when the queue is full.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

from codelm.generate import SamplingParams
from codelm.infill import family_template, mim_infill
from codelm.prompts import FIM_TEMPLATES, Prompt, completion_prompt, family_fim_prompt, family_stop_ids, fim_prompt
from codelm.terms import EOT, ERROR, FIM, INFILL_MODES, LENGTH, MIM, STOP, can
from web.config import ServeConfig
from web.engine import BackendEngine, Engine, Event, Job, QueueFull, RowSpec
from web.prompts import FIM_TEMPLATE, split_sentinel_prompt
from web.schemas import CompletionRequest, InfillRequest

log = logging.getLogger("codelm.web")
STATIC = Path(__file__).parent / "static"


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


def error_response(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                   headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}},
                        status_code=status, headers=headers)


def default_model_id(ckpt, can_fim: bool) -> str:
    """`codelm-<run>`, plus `-fim` for a model that infills. Not named after another model family: an editor
    plugin that picks its FIM template from the id must be told the template (this model's sentinels are cl100k's
    `<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>`, honoured as a raw prompt), or the id can be
    chosen with --model-id."""
    path = Path(ckpt.path)
    run = path.parent.parent.name if path.parent.name == "checkpoints" else path.name
    return f"codelm-{run}" + ("-fim" if can_fim else "")


# ----------------------------------------------------------------------------------------------------------------
# Meet-in-the-middle
# ----------------------------------------------------------------------------------------------------------------
def mim_infill_function(capabilities: dict):
    """An adapter `(model, tokenizer, prefix, suffix, params) -> (text, tokens decoded, details)` over
    codelm.infill.mim_infill, which the engine runs between decode steps."""
    def run(model, tokenizer, prefix, suffix, params: SamplingParams):
        r = mim_infill(model, tokenizer, prefix, suffix, params, capabilities=capabilities)
        details = {"met": r.met, "steps": r.steps, "side": r.side, "mim_finish": r.finish_reason}
        return r.text, r.forward_tokens + r.backward_tokens, details

    return run


# ----------------------------------------------------------------------------------------------------------------
# Waiting for a job's events from async code
# ----------------------------------------------------------------------------------------------------------------
class Channel:
    """Carries a job's events from the worker thread into the event loop."""

    def __init__(self, n_rows: int):
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.open_rows = n_rows

    def sink(self, event: Event) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)

    async def next(self) -> Event | None:
        """The next event, or None once every row has finished."""
        if self.open_rows == 0:
            return None
        event = await self.queue.get()
        if event.finish_reason is not None:
            self.open_rows -= 1
        return event


@dataclass
class Plan:
    """What one request asks the engine for."""
    rows: list[RowSpec]
    mode: str                       # "completion", or an infilling mode (codelm.terms.INFILL_MODES)
    truncated: bool
    mim: tuple[str, str] | None = None


# ----------------------------------------------------------------------------------------------------------------
# Planning: request text -> the rows the engine decodes
# ----------------------------------------------------------------------------------------------------------------
class Planner:
    """Checks a request against the server's limits and the model's capabilities and builds its prompts: codelm's
    layouts for a model codelm trained, the family's FIM template (and the tokenizer's own BOS handling) for a model
    imported from Hugging Face or served by another backend."""

    def __init__(self, ckpt, config: ServeConfig, has_mim_decoding: bool):
        self.tokenizer, self.config = ckpt.tokenizer, config
        context = ckpt.config.context_length
        self.prompt_budget = config.max_prompt_tokens or max(context - 16, context // 2)
        self.caps = ckpt.capabilities or {}
        backend = isinstance(ckpt, ServedBackend)
        self.family = self.tokenizer.fim_family if backend else family_template(self.tokenizer, self.caps)
        self.head = self.tokenizer.head if backend else self.tokenizer.l2r_id  # what a completion prompt opens with
        self.can = {FIM: bool(self.caps.get(can(FIM))) or self.family is not None,
                    MIM: bool(self.caps.get(can(MIM))) and has_mim_decoding}
        self.fim_template = FIM_TEMPLATES[self.family].psm if self.family else FIM_TEMPLATE if self.can[FIM] else None
        self.model_id = config.model_id or default_model_id(ckpt, self.can[FIM])

    def check_bounds(self, max_tokens: int, n: int, max_param: str) -> None:
        if max_tokens > self.config.max_tokens:
            raise ApiError(422, f"{max_param}: at most {self.config.max_tokens} on this server (got {max_tokens})",
                           max_param)
        if n > self.config.max_batch:
            raise ApiError(422, f"n: at most {self.config.max_batch} on this server (got {n})", "n")

    def choose_mode(self, asked: str | None) -> str:
        trained = sorted(self.caps.get("objectives") or {"l2r": 1})
        if asked is None:
            for mode in INFILL_MODES:
                if self.can[mode]:
                    return mode
            raise ApiError(400, f"model {self.model_id} cannot infill: it was trained with objectives "
                                f"{trained} (infilling needs fim or mim) and its tokenizer has no FIM tokens of a "
                                f"known family", "suffix")
        if not self.can[asked]:
            why = ("this server has no meet-in-the-middle decoding (codelm.infill)"
                   if asked == MIM and self.caps.get(can(MIM)) else f"it was trained with objectives {trained}")
            raise ApiError(400, f"model {self.model_id} cannot infill with mode {asked!r}: {why}", "mode")
        return asked

    def plan(self, prefix: str, suffix: str | None, mode: str | None, params: SamplingParams, n: int,
             logprobs: int | None, middle_start: str = "") -> Plan:
        tok, budget, end_ids = self.tokenizer, self.prompt_budget, None
        if suffix is None:
            p = completion_prompt(tok.encode(prefix), budget, self.head)
            kind = "completion"
        else:
            kind = self.choose_mode(mode)
            if kind == MIM:  # the engine's infill builds its own contexts: this prompt is for accounting only
                p = completion_prompt(tok.encode(prefix + middle_start), budget, self.head)
            elif self.family is not None:  # the family's template, then the text the middle must begin with
                mid = tok.encode(middle_start)
                p = family_fim_prompt(tok.encode, tok.vocab, tok.head, self.family, prefix, suffix,
                                      budget - len(mid))
                p = Prompt(p.ids + mid, p.truncated)
                end_ids = family_stop_ids(tok.vocab, self.family, (tok.eot_id,))
            else:
                p = fim_prompt(tok, prefix, suffix, budget, "psm", tok.l2r_id, middle_start)
        rows = []
        for i in range(n):
            seed = None if params.seed is None else params.seed + i
            rows.append(RowSpec(p.ids, SamplingParams(**{**params.__dict__, "seed": seed}), logprobs, end_ids))
        mim = (prefix + middle_start, suffix) if kind == MIM else None
        return Plan(rows, kind, p.truncated, mim)


@dataclass
class ServedBackend:
    """A model another backend loaded (codelm.backends.transformers_lm.TransformersLM), as the app sees a checkpoint:
    its path, tokenizer and context length. Nothing is recorded about its training: it completes, and infills with
    its family's FIM template when its tokenizer has one."""
    lm: object
    path: str
    capabilities: dict = field(default_factory=dict)

    @property
    def tokenizer(self):
        return self.lm.tokenizer

    @property
    def config(self):
        return SimpleNamespace(context_length=self.lm.context_length)


@dataclass
class Server:
    """What the routes share: held in `app.state.server`."""
    ckpt: object
    config: ServeConfig
    engine: Engine
    planner: Planner

    @property
    def model_id(self) -> str:
        return self.planner.model_id

    def submit(self, p: Plan) -> tuple[Job, Channel]:
        channel = Channel(len(p.rows))
        job = Job(p.rows, channel.sink, mim=p.mim)
        try:
            self.engine.submit(job)
        except QueueFull as e:
            raise ApiError(429, str(e), None, "rate_limit_error") from None
        return job, channel


def server_of(request: Request) -> Server:
    return request.app.state.server


# ----------------------------------------------------------------------------------------------------------------
# The app
# ----------------------------------------------------------------------------------------------------------------
def create_app(ckpt, config: ServeConfig | None = None, engine: Engine | None = None) -> FastAPI:
    """The FastAPI app serving a loaded checkpoint. The engine starts and stops with the app (lifespan)."""
    config = config or ServeConfig()
    if engine is None and isinstance(ckpt, ServedBackend):
        engine = BackendEngine(ckpt.lm, max_batch=config.max_batch, max_queue=config.max_queue)
    engine = engine or Engine(ckpt.model, ckpt.tokenizer, max_batch=config.max_batch, max_queue=config.max_queue,
                              mim_infill=mim_infill_function(ckpt.capabilities or {}))

    @asynccontextmanager
    async def lifespan(app):
        engine.start()
        try:
            yield
        finally:
            await asyncio.to_thread(engine.stop)

    app = FastAPI(title="codelm", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.engine = engine
    app.state.server = Server(ckpt, config, engine, Planner(ckpt, config, engine.mim_infill is not None))
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware
        app.add_middleware(CORSMiddleware, allow_origins=config.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "X-API-Key"])
    app.add_exception_handler(RequestValidationError, bad_body)
    app.add_exception_handler(ApiError, api_error)
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


# --- errors -------------------------------------------------------------------------------------------------------
async def bad_body(request, exc: RequestValidationError):
    parts, param = [], None
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        param = param or (".".join(loc) or None)
        parts.append(f"{'.'.join(loc) or 'body'}: {err.get('msg', 'invalid')}")
    return error_response(422, "; ".join(parts), param)


async def api_error(request, exc: ApiError):
    headers = {"Retry-After": "1"} if exc.status == 429 else None
    return error_response(exc.status, exc.message, exc.param, exc.kind, headers)


def check_key(request: Request) -> None:
    api_key = server_of(request).config.api_key
    if not api_key:
        return
    given = request.headers.get("x-api-key") or ""
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    if not secrets.compare_digest(given.encode(), api_key.encode()):
        raise ApiError(401, "missing or wrong API key (send `Authorization: Bearer KEY`)", None,
                       "authentication_error")


async def collect(job: Job, channel: Channel, request: Request) -> list[dict]:
    """Wait for every row's text; a client that goes away cancels the job."""
    rows = [{"text": "", "tokens": [], "finish_reason": None, "timings": None} for _ in job.rows]
    loop = asyncio.get_running_loop()
    checked = loop.time()
    while True:
        try:
            event = await asyncio.wait_for(channel.next(), timeout=0.25)
        except asyncio.TimeoutError:
            event = False
        # look for a gone client every 0.25 s of wall time, also while tokens keep arriving
        if loop.time() - checked >= 0.25:
            checked = loop.time()
            if await request.is_disconnected():
                job.cancel()
                raise ApiError(499, "client closed the request")
        if event is False:
            continue
        if event is None:
            break
        row = rows[event.index]
        row["text"] += event.text
        row["tokens"] += event.tokens
        if event.finish_reason:
            row["finish_reason"], row["timings"] = event.finish_reason, event.timings
    if any(r["finish_reason"] == ERROR for r in rows):
        raise ApiError(500, "generation failed (see the server log)", None, "server_error")
    return rows


# --- routes -------------------------------------------------------------------------------------------------------
router = APIRouter()


@router.get("/health")
async def health(request: Request):
    server = server_of(request)
    return {"status": "ok", "model": server.model_id, **server.engine.stats()}


@router.get("/v1/models", dependencies=[Depends(check_key)])
async def models(request: Request):
    server = server_of(request)
    planner, caps = server.planner, server.planner.caps
    return {"object": "list", "data": [{
        "id": server.model_id, "object": "model", "created": int(Path(server.ckpt.path).stat().st_mtime),
        "owned_by": "codelm", "context_length": server.ckpt.config.context_length,
        "capabilities": {"completion": True, **planner.can}, "objectives": caps.get("objectives"),
        "fim_template": planner.fim_template,
        "infill_modes": [m for m in INFILL_MODES if planner.can[m]],
    }]}


@router.post("/v1/completions", dependencies=[Depends(check_key)])
async def completions(body: CompletionRequest, request: Request):
    server = server_of(request)
    planner = server.planner
    planner.check_bounds(body.max_tokens, body.n, "max_tokens")
    prefix, suffix = body.prompt, body.suffix
    if suffix is None and server.config.raw_fim:
        split = split_sentinel_prompt(prefix, planner.fim_template) if planner.fim_template else None
        if split is not None:
            prefix, suffix = split
    params = SamplingParams(max_new_tokens=body.max_tokens, temperature=body.temperature, top_p=body.top_p,
                            stop=body.stop, seed=body.seed)
    p = planner.plan(prefix, suffix, body.mode, params, body.n, body.logprobs)
    job, channel = server.submit(p)
    cid, created = f"cmpl-{secrets.token_hex(12)}", int(time.time())
    echo = body.prompt if body.echo else ""
    if body.stream:
        return sse(openai_chunks(server.model_id, job, channel, cid, created, echo, p))
    rows = await collect(job, channel, request)
    choices = [{"text": echo + r["text"], "index": i, "finish_reason": openai_finish(r["finish_reason"]),
                "logprobs": openai_logprobs(r["tokens"], len(echo)) if body.logprobs is not None else None}
               for i, r in enumerate(rows)]
    completion_tokens = sum(r["timings"]["predicted_tokens"] for r in rows)
    prompt_tokens = len(p.rows[0].prompt_ids)
    return {"id": cid, "object": "text_completion", "created": created, "model": server.model_id,
            "choices": choices, "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                          "total_tokens": prompt_tokens + completion_tokens},
            "timings": rows[0]["timings"], "mode": p.mode, "truncated": p.truncated}


async def openai_chunks(model_id: str, job: Job, channel: Channel, cid: str, created: int, echo: str, p: Plan):
    def chunk(index, text, finish=None, extra=None):
        return {"id": cid, "object": "text_completion", "created": created, "model": model_id,
                "choices": [{"text": text, "index": index, "logprobs": None, "finish_reason": finish}],
                **(extra or {})}
    try:
        if echo:
            for i in range(len(job.rows)):
                yield chunk(i, echo)
        while (event := await channel.next()) is not None:
            if event.finish_reason == ERROR:
                yield {"error": {"message": "generation failed (see the server log)", "type": "server_error"}}
                continue
            finish = openai_finish(event.finish_reason)
            extra = {"timings": event.timings, "mode": p.mode} if event.finish_reason else None
            if event.text or finish:
                yield chunk(event.index, event.text, finish, extra)
        yield "[DONE]"
    finally:
        job.cancel()  # the client went away (or we are done: then this changes nothing)


@router.post("/infill", dependencies=[Depends(check_key)])
async def infill(body: InfillRequest, request: Request):
    server = server_of(request)
    n_predict = server.config.max_tokens if body.n_predict < 0 else body.n_predict
    server.planner.check_bounds(n_predict, 1, "n_predict")
    extra = "".join(c.text if c.text.endswith("\n") else c.text + "\n" for c in body.input_extra if c.text)
    params = SamplingParams(max_new_tokens=n_predict, temperature=body.temperature, top_k=body.top_k,
                            top_p=body.top_p, stop=body.stop, seed=None if body.seed < 0 else body.seed)
    p = server.planner.plan(extra + body.input_prefix, body.input_suffix, body.mode, params, 1, None, body.prompt)
    job, channel = server.submit(p)
    if body.stream:
        return sse(llama_chunks(server.model_id, job, channel, p))
    row = (await collect(job, channel, request))[0]
    return llama_result(server.model_id, row["text"], row["finish_reason"], row["timings"], p)


def llama_result(model_id: str, text: str, finish: str, timings: dict, p: Plan) -> dict:
    return {"content": text, "stop": True, "model": model_id, "stop_type": llama_stop_type(finish),
            "tokens_predicted": timings["predicted_tokens"], "tokens_evaluated": timings["prompt_tokens"],
            "truncated": p.truncated, "timings": timings, "mode": p.mode}


async def llama_chunks(model_id: str, job: Job, channel: Channel, p: Plan):
    try:
        while (event := await channel.next()) is not None:
            if event.finish_reason == ERROR:
                yield {"error": {"message": "generation failed (see the server log)", "type": "server_error"}}
            elif event.finish_reason:
                yield llama_result(model_id, event.text, event.finish_reason, event.timings, p)
            elif event.text:
                yield {"content": event.text, "stop": False}
    finally:
        job.cancel()


@router.get("/", include_in_schema=False)
async def index():
    return FileResponse(STATIC / "index.html")


# ----------------------------------------------------------------------------------------------------------------
# Response shapes
# ----------------------------------------------------------------------------------------------------------------
def sse(chunks) -> StreamingResponse:
    """Server-sent events: one `data: {json}` line per chunk (OpenAI ends with `data: [DONE]`; llama.cpp does not)."""
    async def lines():
        async for chunk in chunks:
            yield f"data: {chunk if isinstance(chunk, str) else json.dumps(chunk)}\n\n"
    return StreamingResponse(lines(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


# The API edges: codelm's finish reasons (codelm.terms) in each API's words; anything else passes as it is.
OPENAI_FINISH = {LENGTH: "length"}                     # OpenAI: "length", else "stop"
LLAMA_STOP_TYPE = {EOT: "eos", STOP: "eos", LENGTH: "limit"}  # llama.cpp's stop_type


def openai_finish(reason: str | None) -> str | None:
    return None if reason is None else OPENAI_FINISH.get(reason, "stop")


def llama_stop_type(reason: str) -> str:
    return LLAMA_STOP_TYPE.get(reason, reason)


def openai_logprobs(tokens: list[dict], offset: int) -> dict:
    """OpenAI's legacy logprobs object: tokens, their logprobs, top alternatives and character offsets."""
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for t in tokens:
        out["tokens"].append(t["text"])
        out["token_logprobs"].append(t["logprob"])
        out["top_logprobs"].append(t["top"])
        out["text_offset"].append(offset)
        offset += len(t["text"])
    return out

"""The model worker: one thread owns the model and batches the decode steps of all concurrent requests.

    submit(job) -> [pending queue] -> admit: prefill one row alone, sample its first token -> join the batch
                                   -> step: one forward pass decodes one token for every active row
                                   -> finish rows (stop string, end of text, max tokens, context, client gone)

Requests are not serialised behind a lock: a new request is prefilled between two decode steps and joins the
running batch (continuous batching, as in Orca/vLLM, without paged memory). Rows are *right-aligned* in one shared KV
cache: every row's tokens end at the cache's current length, shorter rows are masked on the left with `key_padding`,
and each row has its own rotary positions, so rows of any length decode together. When rows join or leave, the cache
is rebuilt with just the live rows (a copy of a few MB for the CPU presets: simpler than paging, and cheap next to a
forward pass). Each row samples with its own parameters and its own seeded generator.

A model another backend loaded (codelm.backends: any transformers architecture) is served by `BackendEngine`
instead: the same submit/stop/stats, one request at a time (its n choices decode together, with the backend's own
loop and cache), no continuous batching across requests.

Trade-off: meet-in-the-middle infilling runs both directions in its own batch (codelm.infill), so a MIM job runs as
a whole between two decode steps and pauses the batch meanwhile.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from codelm.generate import SamplingParams, TextStream, mask_unused_vocab, prefill, sample_tokens
from codelm.terms import CANCELLED, EOT, ERROR, LENGTH, STOP

log = logging.getLogger("codelm.web")


class QueueFull(Exception):
    """More requests are waiting than the server accepts (answered with 429)."""


# ----------------------------------------------------------------------------------------------------------------
# What callers submit and what they get back
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class RowSpec:
    """One sequence to generate: prompt token ids (marker included) and how to sample."""
    prompt_ids: list[int]
    params: SamplingParams
    logprobs: int | None = None        # also report the top-k alternatives' log-probabilities
    end_ids: frozenset[int] | None = None  # tokens that end the row (default: end-of-text; a family's FIM adds its own)


@dataclass
class Event:
    """Sent to a job's sink from the worker thread. `finish_reason` is set on the row's last event."""
    index: int
    text: str = ""
    tokens: list[dict] = field(default_factory=list)   # per token: text, logprob, top (only when logprobs asked)
    finish_reason: str | None = None                     # a codelm.terms finish reason
    timings: dict | None = None


@dataclass
class Job:
    """A request's rows. `sink(event)` is called from the worker thread; it must be quick and thread-safe."""
    rows: list[RowSpec]
    sink: Callable[[Event], None]
    mim: tuple[str, str] | None = None   # (prefix, suffix) for a meet-in-the-middle job instead of rows
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()


# ----------------------------------------------------------------------------------------------------------------
# Worker-side state of one row
# ----------------------------------------------------------------------------------------------------------------
class Row:
    def __init__(self, job: Job, index: int, spec: RowSpec, tokenizer, context_length: int):
        self.job, self.index, self.spec = job, index, spec
        self.params = spec.params
        self.tokenizer = tokenizer
        seed = spec.params.seed if spec.params.seed is not None else int.from_bytes(os.urandom(6), "little")
        self.generator = torch.Generator().manual_seed(seed)
        self.length = len(spec.prompt_ids)   # tokens of this row in the KV cache
        # the model's position table ends at context_length: a row stops before it would pass it
        self.budget = min(spec.params.max_new_tokens, context_length - self.length)
        self.stream = TextStream(tokenizer, spec.params.stop)  # stop strings, held-back tails, partial UTF-8
        self.ends = spec.end_ids or frozenset((tokenizer.eot_id,))
        self.generated: list[int] = []
        self.next_token: int | None = None   # sampled but not yet fed to the model
        self.finish: str | None = None
        self.t0 = time.perf_counter()
        self.prefill_ms = 0.0

    def take(self, logits: torch.Tensor) -> None:
        """Sample the next token from this row's logits [V] and emit whatever text became final."""
        logits = mask_unused_vocab(logits.unsqueeze(0), self.tokenizer.n_vocab)
        token = int(sample_tokens(logits, self.params, [self.generator])[0])
        if token in self.ends:
            self._end(EOT, self.stream.finish())
            return
        self.generated.append(token)
        self.next_token = token
        info = self._logprob_info(logits[0], token) if self.spec.logprobs is not None else None
        text = self.stream.push(token)
        if self.stream.stopped:
            self._end(STOP, text + self.stream.finish(), info)
        elif len(self.generated) >= self.budget:
            self._end(LENGTH, text + self.stream.finish(), info)
        elif text or info:
            self.job.sink(Event(self.index, text, [info] if info else []))

    def _logprob_info(self, logits: torch.Tensor, token: int) -> dict:
        logp = torch.log_softmax(logits.float(), -1)
        k = max(0, min(int(self.spec.logprobs), 20))
        alternatives = {}
        if k:
            top = torch.topk(logp, k)
            alternatives = {self._token_text(i): lp for lp, i in zip(top.values.tolist(), top.indices.tolist())}
        return {"text": self._token_text(token), "logprob": float(logp[token]), "top": alternatives}

    def _token_text(self, i: int) -> str:
        if i < self.tokenizer.n_ranks:
            return self.tokenizer.token_bytes(i).decode("utf-8", errors="replace")
        return self.tokenizer.decode_with_specials([i])

    def _end(self, reason: str, text: str, info: dict | None = None) -> None:
        self.finish = reason
        self.next_token = None
        self.job.sink(Event(self.index, text, [info] if info else [], reason, self.timings()))

    def cancel(self, reason: str = CANCELLED) -> None:
        if self.finish is None:
            self.finish = reason
            self.job.sink(Event(self.index, "", [], reason, self.timings()))

    def timings(self) -> dict:
        total_ms = (time.perf_counter() - self.t0) * 1000
        predicted_ms = max(total_ms - self.prefill_ms, 1e-6)
        n = len(self.generated)
        return {"prompt_tokens": len(self.spec.prompt_ids), "prompt_ms": round(self.prefill_ms, 3),
                "predicted_tokens": n, "predicted_ms": round(predicted_ms, 3),
                "predicted_per_second": round(n / predicted_ms * 1000, 3) if n else 0.0,
                "total_ms": round(total_ms, 3)}


# ----------------------------------------------------------------------------------------------------------------
# The engine
# ----------------------------------------------------------------------------------------------------------------
class Worker:
    """A model in a worker thread, fed by a queue of jobs: the public side every engine shares. `submit` is
    thread-safe; everything else happens in the worker (`_run`)."""

    mim_infill = None

    def __init__(self, max_batch: int, max_queue: int, name: str):
        self.max_batch, self.max_queue = max_batch, max_queue
        self._pending: collections.deque[Job] = collections.deque()
        self._wake = threading.Condition()
        self._stopping = False
        # counters read by /health, tests and the load benchmark
        self.generated_tokens = 0
        self.steps = 0
        self.completed_rows = 0
        self.cancelled_rows = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        raise NotImplementedError

    def start(self) -> "Worker":
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        self._thread.join(timeout)

    def submit(self, job: Job) -> None:
        with self._wake:
            if len(self._pending) >= self.max_queue:
                raise QueueFull(f"the server is busy ({len(self._pending)} requests waiting); retry shortly")
            self._pending.append(job)
            self._wake.notify()

    @property
    def active_rows(self) -> int:
        raise NotImplementedError

    @property
    def queued_jobs(self) -> int:
        return len(self._pending)

    def stats(self) -> dict:
        return {"active_rows": self.active_rows, "queued_requests": self.queued_jobs, "max_batch": self.max_batch,
                "max_queue": self.max_queue, "generated_tokens": self.generated_tokens, "decode_steps": self.steps,
                "completed_rows": self.completed_rows, "cancelled_rows": self.cancelled_rows}


class Engine(Worker):
    """Owns a codelm model in a worker thread and batches the decode steps of all its requests."""

    def __init__(self, model, tokenizer, *, max_batch: int = 16, max_queue: int = 64, mim_infill=None):
        super().__init__(max_batch, max_queue, "codelm-model-worker")
        self.model, self.tokenizer = model, tokenizer
        self.context_length = model.config.context_length
        self.mim_infill = mim_infill  # (model, tokenizer, prefix, suffix, params) -> (text, n_tokens, details)
        self.device = next(model.parameters()).device
        self._rows: list[Row] = []

    @property
    def active_rows(self) -> int:
        return len(self._rows)

    # --- the worker loop ----------------------------------------------------------------------------------------------
    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self._wake:
                while not self._stopping and not self._pending and not self._rows:
                    self._wake.wait()
                if self._stopping:
                    break
            try:
                self._admit()
                if self._rows:
                    self._step()
                self._retire()
            except Exception:  # a bug must not kill the worker silently: fail the live rows, keep serving
                log.exception("model worker step failed")
                for row in self._rows:
                    row.cancel(ERROR)
                self._rows = []
                self._rebuild([])
        for row in self._rows:
            row.cancel(CANCELLED)

    def _admit(self) -> None:
        """Prefill waiting jobs' rows while the batch has room; they join before the next decode step."""
        joined: list[tuple[Row, list]] = []
        kept = None  # the live rows' keys/values, read before a prefill replaces the model's cache
        while self._pending and len(self._rows) + len(joined) < self.max_batch:
            with self._wake:
                job = self._pending[0]
                if job.mim is None and len(self._rows) + len(joined) + len(job.rows) > self.max_batch \
                        and (self._rows or joined):
                    break  # wait until the whole job fits, so that n choices stay in one batch
                self._pending.popleft()
            if job.cancelled.is_set():
                for i, _ in enumerate(job.rows):
                    job.sink(Event(i, "", [], CANCELLED))
                continue
            if kept is None:
                kept = [(row, self._row_kv(j)) for j, row in enumerate(self._rows)]
            try:
                joined += self._admit_job(job)
            except Exception:  # fail this request, keep serving the others
                log.exception("admitting a request failed")
                for i, _ in enumerate(job.rows):
                    job.sink(Event(i, "", [], ERROR))
        if kept is not None:  # the model's cache now holds a prefill's or an infill's rows: put the batch back
            self._rebuild(kept + joined)

    def _admit_job(self, job: Job) -> list[tuple[Row, list]]:
        """Prefill a job's rows (or run its MIM infill whole); the rows still generating, with their keys/values."""
        if job.mim is not None:
            self._run_mim(job)
            return []
        joined = []
        for i, spec in enumerate(job.rows):
            row = Row(job, i, spec, self.tokenizer, self.context_length)
            kv = self._prefill(row)
            if row.finish is None:
                joined.append((row, kv))
            else:
                self.completed_rows += 1
        return joined

    def _prefill(self, row: Row) -> list:
        """Run the prompt alone through the model; returns its keys/values per layer [(k [H,L,D], v [H,L,D])]."""
        ids = torch.tensor([row.spec.prompt_ids], device=self.device)
        t = time.perf_counter()
        self.model.setup_cache(1, ids.shape[1])
        try:
            logits = prefill(self.model, ids)[0]
            kv = self.model.cache_rows(0, ids.shape[1])
        finally:
            self.model.clear_cache()
        row.prefill_ms = (time.perf_counter() - t) * 1000
        row.t0 = t
        if row.budget <= 0:
            row.cancel(LENGTH)
            return kv
        row.take(logits)
        self.generated_tokens += 1
        return kv

    def _step(self) -> None:
        """One decode step: feed every active row its last sampled token, sample the next one."""
        if self.model.cache_length + 1 > self.model.cache_capacity:
            self._rebuild([(row, self._row_kv(j)) for j, row in enumerate(self._rows)], headroom=64)
        S = self.model.cache_length
        tokens = torch.tensor([[row.next_token] for row in self._rows], device=self.device)
        positions = torch.tensor([[row.length] for row in self._rows], device=self.device)
        starts = torch.tensor([S - row.length for row in self._rows], device=self.device)
        key_padding = torch.arange(S + 1, device=self.device).unsqueeze(0) >= starts.unsqueeze(1)
        logits = self.model(tokens, positions=positions, key_padding=key_padding)[:, -1]
        self.steps += 1
        for j, row in enumerate(self._rows):
            row.length += 1
            if row.job.cancelled.is_set():
                row.cancel()
                continue
            row.take(logits[j])
            self.generated_tokens += 1

    def _retire(self) -> None:
        """Drop finished and cancelled rows; rebuild the cache when the set changed."""
        for row in self._rows:
            if row.finish is None and row.job.cancelled.is_set():
                row.cancel()
        live = [(row, j) for j, row in enumerate(self._rows) if row.finish is None]
        if len(live) == len(self._rows):
            return
        for row in self._rows:
            if row.finish == CANCELLED:
                self.cancelled_rows += 1
            elif row.finish is not None:
                self.completed_rows += 1
        self._rebuild([(row, self._row_kv(j)) for row, j in live])

    # --- the shared, right-aligned KV cache (the model's; between steps it holds exactly self._rows) ----------------
    def _row_kv(self, j: int) -> list:
        """Row j's live keys/values per layer: the last `length` slots of its cache row."""
        return self.model.cache_rows(j, self._rows[j].length)

    def _rebuild(self, rows_kv: list[tuple[Row, list]], headroom: int = 32) -> None:
        """A fresh cache holding exactly these rows, right-aligned at the longest one, with room to grow."""
        self._rows = [row for row, _ in rows_kv]
        if not rows_kv:
            self.model.clear_cache()
            return
        capacity = max(row.length for row in self._rows) + headroom
        self.model.install_cache_rows([kv for _, kv in rows_kv], capacity)

    # --- meet-in-the-middle -------------------------------------------------------------------------------------------
    def _run_mim(self, job: Job) -> None:
        """Run a MIM infill job whole (it batches its two directions itself); one event per choice."""
        prefix, suffix = job.mim
        for i, spec in enumerate(job.rows):
            if job.cancelled.is_set():
                job.sink(Event(i, "", [], CANCELLED))
                continue
            t = time.perf_counter()
            try:
                text, n_tokens, details = self.mim_infill(self.model, self.tokenizer, prefix, suffix,
                                                          spec.params)
            except Exception as e:
                log.exception("meet-in-the-middle infill failed")
                job.sink(Event(i, "", [], ERROR, {"error": f"{type(e).__name__}: {e}"}))
                continue
            ms = (time.perf_counter() - t) * 1000
            self.generated_tokens += n_tokens
            self.completed_rows += 1
            timings = {"prompt_tokens": len(spec.prompt_ids), "prompt_ms": 0.0, "predicted_tokens": n_tokens,
                       "predicted_ms": round(ms, 3), "total_ms": round(ms, 3),
                       "predicted_per_second": round(n_tokens / max(ms, 1e-6) * 1000, 3), **details}
            job.sink(Event(i, text, [], STOP, timings))


# ----------------------------------------------------------------------------------------------------------------
# Another backend's model
# ----------------------------------------------------------------------------------------------------------------
class BackendEngine(Worker):
    """Serves a model of another backend (codelm.backends.transformers_lm.TransformersLM): a worker thread decodes
    one job at a time through the backend's `generate_ids` (its choices as one batch, each with its own seed) and
    streams text through its per-token callback. The same public side as Engine."""

    def __init__(self, lm, *, max_batch: int = 16, max_queue: int = 64):
        super().__init__(max_batch, max_queue, "codelm-backend-worker")  # no MIM: it needs a codelm-trained model
        self.lm, self.tokenizer = lm, lm.tokenizer
        self._active = 0

    @property
    def active_rows(self) -> int:
        return self._active

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and not self._pending:
                    self._wake.wait()
                if self._stopping:
                    break
                job = self._pending.popleft()
            self._active = len(job.rows)
            try:
                self._decode(job)
            except Exception:  # fail this request, keep serving the others
                log.exception("generation failed")
                for i, _ in enumerate(job.rows):
                    job.sink(Event(i, "", [], ERROR))
            finally:
                self._active = 0
        for job in self._pending:
            for i, _ in enumerate(job.rows):
                job.sink(Event(i, "", [], CANCELLED))

    def _decode(self, job: Job) -> None:
        """A job's rows share one prompt and its sampling parameters but their seeds (web/app.py's Planner)."""
        first = job.rows[0]
        if job.cancelled.is_set():
            for i, _ in enumerate(job.rows):
                job.sink(Event(i, "", [], CANCELLED))
            self.cancelled_rows += len(job.rows)
            return
        seeds = [spec.params.seed if spec.params.seed is not None else int.from_bytes(os.urandom(6), "little")
                 for spec in job.rows]
        t0 = time.perf_counter()
        first_token: list[float] = []

        def on_token(event) -> bool:
            if not first_token:
                first_token.append(time.perf_counter())
            self.generated_tokens += 1
            info = ([{"text": self.tokenizer.decode_with_specials([event.token_id]), "logprob": event.logprob,
                      "top": {}}] if first.logprobs is not None and not (event.finished and event.finish_reason == EOT)
                    else [])
            if event.text or info:
                job.sink(Event(event.sample, event.text, info))
            return not job.cancelled.is_set()

        out = self.lm.generate_ids([first.prompt_ids], first.params, [seeds], len(job.rows), first.end_ids,
                                   on_token)[0]
        total_ms = (time.perf_counter() - t0) * 1000
        prompt_ms = ((first_token[0] if first_token else time.perf_counter()) - t0) * 1000
        self.steps += max((c.passes for c in out), default=0)
        for i, c in enumerate(out):
            cancelled = job.cancelled.is_set()
            self.cancelled_rows += cancelled
            self.completed_rows += not cancelled
            n = len(c.token_ids)
            predicted_ms = max(total_ms - prompt_ms, 1e-6)
            timings = {"prompt_tokens": len(first.prompt_ids), "prompt_ms": round(prompt_ms, 3),
                       "predicted_tokens": n, "predicted_ms": round(predicted_ms, 3),
                       "predicted_per_second": round(n / predicted_ms * 1000, 3) if n else 0.0,
                       "total_ms": round(total_ms, 3)}
            job.sink(Event(i, "", [], CANCELLED if cancelled else c.finish_reason, timings))

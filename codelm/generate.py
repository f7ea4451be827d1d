"""Decoding, in gpt-fast's manner: small pure functions and a per-token callback (the streaming hook).

    logits_to_probs -> sample_tokens -> prefill -> decode_one_token -> decode_batch(on_token) -> generate_batch

Many prompts decode as one batch: prompts are left-padded, `key_padding` hides the padding keys and every row gets its
own rotary positions (its first real token is at position 0), so a row computes what it would compute alone.
n samples per prompt share one prefill: the KV cache is filled for the prompts, then each row is repeated n times.
Every row has its own random generator, so a sample depends only on its seed, not on what else is in the batch.
Rows that finish are dropped from the cache, so long-tailed batches do not keep paying for finished rows.

Stop strings are checked on decoded text (a stop string split across tokens still stops) and streamed text never
shows anything past a stop: `TextStream` holds back a tail that could still become a stop string, and a partial
UTF-8 character until its last byte arrives.

The tokenizer only needs `encode(str) -> ids`, `decode_bytes(ids) -> bytes` (special tokens decode to nothing),
`eot_id` and `n_vocab`; the BOS marker comes from the checkpoint's capabilities (`capabilities["markers"]["l2r"]`,
`<|l2r|>` for codelm models), so a Hugging Face model wrapped in that interface decodes through the same code.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from typing import Callable, Collection, Sequence

import torch

from codelm.errors import ConfigError
from codelm.prompts import completion_prompt
from codelm.stops import StopMatcher
from codelm.terms import EOT, LENGTH, STOP


@dataclass
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 0.0      # 0 = greedy
    top_k: int = 0                # 0 = off
    top_p: float = 1.0            # 1 = off
    stop: list[str] = field(default_factory=list)
    seed: int | None = None       # default seed of row r is seed + r when no per-row seeds are given
    # Greedy decoding of one row drafts up to this many tokens per step by prompt lookup (the tokens that followed
    # the latest earlier occurrence of the text's last few tokens) and checks them in one pass: the same tokens as
    # one-at-a-time decoding, in fewer passes when the text repeats itself (code does). 0 = off.
    lookup_draft: int = 4

    def __post_init__(self):
        if self.max_new_tokens < 0:
            raise ConfigError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0, got {self.top_k}")
        if self.lookup_draft < 0:
            raise ConfigError(f"lookup_draft must be >= 0, got {self.lookup_draft}")


@dataclass
class Completion:
    """One generated continuation. `text` is cut at the first stop string; `token_ids` are every token generated
    (the end-of-text token excluded), so near a stop string they may cover a little more than `text`.
    `logprobs[i]` is the model's log-probability of `token_ids[i]` (temperature 1, before top-k/top-p), the quantity
    likelihood ranking wants. finish_reason: "eot" (end of text), "stop" (a stop string), "length" (max_new_tokens
    or the context ran out). `passes`: the sequential model passes it took, the prefill included (the latency
    measure: one per token, fewer when prompt-lookup drafts are accepted)."""
    text: str
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str
    passes: int = 0

    @property
    def sum_logprob(self) -> float:
        return float(sum(self.logprobs))

    @property
    def mean_logprob(self) -> float:
        return self.sum_logprob / len(self.logprobs) if self.logprobs else float("-inf")


@dataclass
class TokenEvent:
    """What the streaming callback sees after every generated token. `text` is the newly releasable text (possibly
    empty while a partial character or a possible stop string is held back); `finished` is set on the row's last
    event, whose text is the remaining tail."""
    prompt: int
    sample: int
    token_id: int
    text: str
    logprob: float
    finished: bool = False
    finish_reason: str | None = None


OnToken = Callable[[TokenEvent], "bool | None"]  # returning False stops that row (a client went away)


# ----------------------------------------------------------------------------------------------------------------
# Sampling: pure functions over logits
# ----------------------------------------------------------------------------------------------------------------
def logits_to_probs(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """logits [B, V] -> probabilities after temperature, top-k and nucleus (top-p) truncation."""
    logits = logits / max(temperature, 1e-5)
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        cumulative = sorted_probs.cumsum(-1)
        drop = cumulative - sorted_probs > top_p  # keep the smallest set whose mass reaches top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def sample_tokens(logits: torch.Tensor, params: SamplingParams,
                  generators: Sequence[torch.Generator | None]) -> torch.Tensor:
    """logits [B, V] -> next token ids [B]. Row b draws from generators[b] only, so its sample does not depend on
    the other rows (one multinomial over the whole batch would share one random stream)."""
    if params.temperature <= 0:
        return logits.argmax(-1)
    probs = logits_to_probs(logits.float(), params.temperature, params.top_k, params.top_p)
    return torch.stack([torch.multinomial(probs[b], 1, generator=generators[b]).squeeze(0)
                        for b in range(probs.shape[0])])


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Log-probabilities (temperature 1) of `tokens` [B] under `logits` [B, V]."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens.view(-1, 1)).squeeze(-1)


def mask_unused_vocab(logits: torch.Tensor, n_vocab: int) -> torch.Tensor:
    """Embedding rows past the tokenizer's vocabulary (padding to a multiple of 64) are never valid outputs."""
    if logits.shape[-1] > n_vocab:
        logits[..., n_vocab:] = float("-inf")
    return logits


def make_generators(seeds: Sequence[int | None], device) -> list[torch.Generator | None]:
    gens = []
    for s in seeds:
        gens.append(None if s is None else torch.Generator(device=device).manual_seed(int(s)))
    return gens


# ----------------------------------------------------------------------------------------------------------------
# Text: incremental UTF-8, stop strings, hold-back
# ----------------------------------------------------------------------------------------------------------------
class TextStream:
    """The decoded text of one generated sequence, released in safe pieces: only whole UTF-8 characters, cut at the
    first stop string, holding back a tail that could still become one. The pieces concatenate to `text`."""

    def __init__(self, tokenizer, stop: Sequence[str]):
        self.tokenizer = tokenizer
        self._stops = StopMatcher(stop)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""
        self.emitted = 0
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Add one token; return the newly safe text."""
        if self.stopped:
            return ""
        self.text += self._decoder.decode(self.tokenizer.decode_bytes([token_id]))
        cut = self._stops.feed(self.text)
        if cut >= 0:
            self.text, self.stopped = self.text[:cut], True
            return self._release(len(self.text))
        return self._release(len(self.text) - self._stops.held())

    def finish(self) -> str:
        """The sequence ended: flush a dangling partial character and the held-back tail."""
        if not self.stopped:
            self.text += self._decoder.decode(b"", final=True)
            cut = self._stops.feed(self.text)
            if cut >= 0:
                self.text, self.stopped = self.text[:cut], True
        return self._release(len(self.text))

    def _release(self, safe: int) -> str:
        piece = self.text[self.emitted:safe] if safe > self.emitted else ""
        self.emitted = max(self.emitted, safe)
        return piece


# ----------------------------------------------------------------------------------------------------------------
# Batches: padding, the KV cache, one step
# ----------------------------------------------------------------------------------------------------------------
def bos_id(tokenizer, capabilities: dict | None = None, direction: str = "l2r") -> int | None:
    """The BOS marker of a reading direction: the checkpoint's recorded marker, else the tokenizer's."""
    markers = (capabilities or {}).get("markers") or {}
    if markers.get(direction) is not None:
        return int(markers[direction])
    return getattr(tokenizer, f"{direction}_id", None)


def left_pad(rows: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token rows -> (ids [B, T], key_padding [B, T], positions [B, T]), left-padded so every row's last token is in
    the last column; each row's first real token gets position 0 (padding gets 0 too, and is never attended to)."""
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    real = torch.zeros((len(rows), T), dtype=torch.bool)
    for b, r in enumerate(rows):
        if len(r):
            ids[b, T - len(r):] = torch.tensor(list(r), dtype=torch.long)
            real[b, T - len(r):] = True
    positions = (real.long().cumsum(-1) - 1).clamp(min=0)
    return ids, real, positions


@torch.no_grad()
def prefill(model, ids: torch.Tensor, positions: torch.Tensor | None = None,
            key_padding: torch.Tensor | None = None) -> torch.Tensor:
    """Run the prompts through the model, filling the KV cache; returns the last position's logits [B, V].
    Only the last position goes through the output head (the vocabulary matmul dominates small models)."""
    hidden = model(ids, positions=positions, key_padding=key_padding, return_hidden=True)
    return model.output_logits(hidden[:, -1])  # µP scales logits there


@torch.no_grad()
def decode_one_token(model, tokens: torch.Tensor, positions: torch.Tensor | None = None,
                     key_padding: torch.Tensor | None = None) -> torch.Tensor:
    """tokens [B] at positions [B] -> next-token logits [B, V]; appends to the KV cache."""
    pos = None if positions is None else positions.view(-1, 1)
    return model(tokens.view(-1, 1), positions=pos, key_padding=key_padding)[:, -1]


@torch.no_grad()
def verify_draft(model, last: int, draft: list[int], position: int, n_vocab: int) -> tuple[torch.Tensor, int]:
    """Feed one row's newest token and a draft of what follows it in one pass. Returns the logits after each fed
    token [1 + len(draft), V] and how many draft tokens greedy decoding would have produced itself; the KV cache
    keeps exactly those (the slots of rejected tokens are overwritten by the next pass)."""
    start = model.cache_length
    ids = torch.tensor([[last] + draft], device=model.embed.weight.device)
    logits = model(ids, positions=torch.arange(position, position + ids.shape[1], device=ids.device))[0]
    mask_unused_vocab(logits, n_vocab)
    predicted = logits[:-1].argmax(-1).tolist()
    accepted = 0
    while accepted < len(draft) and predicted[accepted] == draft[accepted]:
        accepted += 1
    model.truncate_cache(start + 1 + accepted)
    return logits, accepted


class PromptLookup:
    """Drafts for prompt-lookup decoding (Saxena 2023): the tokens that followed the latest earlier occurrence of
    the sequence's last n tokens, longest n first. The index maps each n-gram to where it last ended, so a lookup
    costs a few dict probes however long the text is."""

    def __init__(self, tokens: Sequence[int], max_ngram: int = 3):
        self.tokens: list[int] = []
        self.max_ngram = max_ngram
        self.ends: dict[tuple[int, ...], int] = {}
        self.extend(tokens)

    def extend(self, tokens: Sequence[int]) -> None:
        for t in tokens:
            # the n-grams ending just before t now have a follower: index them
            end = len(self.tokens)
            for n in range(1, min(self.max_ngram, end) + 1):
                self.ends[tuple(self.tokens[end - n:end])] = end
            self.tokens.append(t)

    def draft(self, k: int) -> list[int]:
        for n in range(min(self.max_ngram, len(self.tokens)), 0, -1):
            end = self.ends.get(tuple(self.tokens[-n:]))
            if end is not None:
                # A match close to the end overlaps the tail: the text is periodic there, so the draft continues
                # the period (a run of one token drafts more of it, not just one).
                period = self.tokens[end:]
                return (period * (k // len(period) + 1))[:k]
        return []


def expand_seeds(seeds, n_prompts: int, n: int, default: int | None) -> list[int | None]:
    """Seeds for the B*n rows (prompt-major). seeds[i] is an int (sample j gets seeds[i] + j) or a list of n ints;
    without seeds, row r gets default + r (or no seed at all: torch's global generator)."""
    if seeds is None:
        return [None if default is None else default + r for r in range(n_prompts * n)]
    if len(seeds) != n_prompts:
        raise ConfigError(f"got {len(seeds)} seeds for {n_prompts} prompts")
    out: list[int | None] = []
    for s in seeds:
        if isinstance(s, (list, tuple)):
            if len(s) != n:
                raise ConfigError(f"got {len(s)} seeds for a prompt with n={n} samples")
            out.extend(int(x) for x in s)
        else:
            out.extend(int(s) + j for j in range(n))
    return out


# ----------------------------------------------------------------------------------------------------------------
# The decoding loop
# ----------------------------------------------------------------------------------------------------------------
@torch.inference_mode()
def decode_batch(model, tokenizer, prompt_ids: Sequence[Sequence[int]], params: SamplingParams,
                 seeds: Sequence[int | None], n: int = 1, on_token: OnToken | None = None,
                 end_ids: Collection[int] | None = None) -> list[list[Completion]]:
    """Decode n continuations of each token prompt (BOS already included) as one batch. Rows are prompt-major:
    row i*n + j is sample j of prompt i, seeded by seeds[i*n + j]. The end-of-text token ends a row (or any of
    `end_ids`: a model family's FIM template ends its middle with its own tokens).

    Runs under inference mode (no autograd bookkeeping on the ~200 small ops of a step; the KV cache it creates is
    dropped before returning). A step's only host reads are the sampled tokens and their log-probabilities, which
    the stream, the stop strings and the callback need anyway."""
    device = next(model.parameters()).device
    limit = model.config.context_length
    B, R = len(prompt_ids), len(prompt_ids) * n
    lengths = [len(p) for p in prompt_ids]
    budget = [min(params.max_new_tokens, limit - lengths[r // n]) for r in range(R)]  # new tokens per row
    rows = [RowState(r // n, r % n, TextStream(tokenizer, params.stop), budget[r]) for r in range(R)]
    ends = frozenset(end_ids) if end_ids else frozenset((tokenizer.eot_id,))
    if R == 0:
        return []
    if max(budget) <= 0:
        return [[Completion("", [], [], LENGTH) for _ in range(n)] for _ in range(B)]

    ids, real, positions = left_pad(prompt_ids)
    T = ids.shape[1]
    padded = not bool(real.all())
    model.setup_cache(B, T + max(budget))
    try:
        key_padding = torch.zeros(B, T + max(budget), dtype=torch.bool, device=device)
        key_padding[:, :T] = real
        logits = prefill(model, ids.to(device), positions.to(device), key_padding[:, :T] if padded else None)
        if n > 1:  # one prefill for all samples: repeat every prompt's cache rows n times
            expand = torch.arange(B, device=device).repeat_interleave(n)
            model.select_cache_rows(expand)
            logits, key_padding = logits[expand], key_padding[expand]
        if R == 1 and params.temperature <= 0 and params.lookup_draft > 0:
            _decode_with_lookup(model, tokenizer, prompt_ids[0], logits, params, rows[0], ends, on_token)
            return [[rows[0].completion()]]
        next_pos = torch.tensor([lengths[r // n] for r in range(R)], device=device)
        alive = list(range(R))  # batch row -> global row
        generators = make_generators(seeds, device)
        for step in range(max(budget)):
            toks, still = sample_step(logits, params, tokenizer.n_vocab, rows, alive, generators, step, ends,
                                      on_token)
            if not still:
                break
            if len(still) < len(alive):  # drop finished rows from the batch and the cache
                keep = torch.tensor(still, device=device)
                model.select_cache_rows(keep)
                toks, next_pos, key_padding = toks[keep], next_pos[keep], key_padding[keep]
                alive = [alive[b] for b in still]
            slot = model.cache_length
            if padded:
                key_padding[:, slot] = True
            logits = decode_one_token(model, toks, next_pos, key_padding[:, :slot + 1] if padded else None)
            next_pos = next_pos + 1
    finally:
        model.clear_cache()
    return [[rows[r].completion() for r in range(i * n, (i + 1) * n)] for i in range(B)]


def _decode_with_lookup(model, tokenizer, prompt: Sequence[int], logits: torch.Tensor, params: SamplingParams,
                        row: "RowState", ends: Collection[int], on_token) -> None:
    """Greedy decoding of one row with prompt-lookup drafts; `row.passes` counts its passes (the prefill included).
    Each pass feeds the newest token plus a draft and keeps the longest prefix of the draft that greedy decoding
    agrees with, so one pass yields 1 to 1 + lookup_draft tokens. On a CPU a pass over a few tokens costs little
    more than over one: the weights are read once."""
    lookup = PromptLookup(prompt)
    budget = row.budget
    position, produced = len(prompt), 0  # position of the next token to feed; tokens emitted so far
    row.passes = 1

    def emit(token: int, logprob: float) -> bool:
        nonlocal produced
        reason = row.advance(token, logprob, produced, ends, on_token)
        produced += 1
        return reason is None

    logits = logits[0]
    while True:
        mask_unused_vocab(logits, tokenizer.n_vocab)
        token = logits.argmax().view(1)
        if not emit(int(token), float(token_logprobs(logits.view(1, -1), token))):
            return
        lookup.extend([int(token)])
        draft = lookup.draft(min(params.lookup_draft, budget - produced))
        fed, accepted = verify_draft(model, int(token), draft, position, tokenizer.n_vocab)
        position, row.passes = position + 1 + accepted, row.passes + 1
        if accepted:
            lps = token_logprobs(fed[:accepted], torch.tensor(draft[:accepted], device=fed.device)).tolist()
            for t, lp in zip(draft[:accepted], lps):
                if not emit(t, lp):
                    return
            lookup.extend(draft[:accepted])
        logits = fed[accepted]


@dataclass
class RowState:
    """One sequence being decoded: sample `sample` of prompt `prompt`, its text stream, what it produced so far,
    and why and after how many passes it ended."""
    prompt: int
    sample: int
    stream: TextStream
    budget: int                       # new tokens it may produce
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    reason: str | None = None
    passes: int = 0

    def advance(self, t: int, lp: float, step: int, ends: Collection[int], on_token: OnToken | None) -> str | None:
        """Record the new token t (the step-th); return the finish reason if the row is done. A token of `ends`
        (end-of-text) ends the row and is not part of it."""
        if t in ends:
            reason, piece = EOT, self.stream.finish()
        else:
            self.tokens.append(t)
            self.logprobs.append(lp)
            piece = self.stream.push(t)
            reason = STOP if self.stream.stopped else (LENGTH if step + 1 >= self.budget else None)
            if reason == LENGTH:
                piece += self.stream.finish()
        if on_token is not None:
            if on_token(TokenEvent(self.prompt, self.sample, t, piece, lp, reason is not None, reason)) is False \
                    and reason is None:
                reason = STOP  # the consumer asked to stop this row
                rest = self.stream.finish()
                if rest:
                    on_token(TokenEvent(self.prompt, self.sample, t, rest, lp, True, reason))
        self.reason = reason
        return reason

    def completion(self) -> Completion:
        return Completion(self.stream.text, self.tokens, self.logprobs, self.reason or LENGTH, self.passes)


def sample_step(logits: torch.Tensor, params: SamplingParams, n_vocab: int, rows: Sequence[RowState],
                alive: Sequence[int], generators: Sequence[torch.Generator | None], step: int, ends: Collection[int],
                on_token: OnToken | None = None) -> tuple[torch.Tensor, list[int]]:
    """One step of the live rows (`alive`: batch row -> global row), whatever model computed their logits [B, V]:
    sample each row's token with its own generator, record it in its RowState. Returns the sampled tokens [B] and
    the batch indices of the rows still going (a finished row records its passes)."""
    mask_unused_vocab(logits, n_vocab)
    toks = sample_tokens(logits, params, [generators[r] for r in alive])
    lps = token_logprobs(logits, toks).tolist()
    still = []
    for b, (r, t) in enumerate(zip(alive, toks.tolist())):
        if rows[r].advance(t, lps[b], step, ends, on_token) is None:
            still.append(b)
        else:
            rows[r].passes = step + 1
    return toks, still


def generate_batch(model, tokenizer, prompts: Sequence[str], params: SamplingParams | None = None,
                   seeds: Sequence[int | Sequence[int]] | None = None, n: int = 1, on_token: OnToken | None = None,
                   capabilities: dict | None = None) -> list[list[Completion]]:
    """n completions of each prompt, decoded as one batch. seeds[i] seeds prompt i's samples (an int: sample j uses
    seeds[i] + j; or a list of n ints); a sample depends only on its seed. Greedy when temperature is 0."""
    params = params or SamplingParams()
    if n < 1:
        raise ConfigError(f"n must be >= 1, got {n}")
    bos = bos_id(tokenizer, capabilities)
    budget = model.config.context_length - 1  # room for one new token
    encoded = tokenizer.encode_batch(list(prompts)) if hasattr(tokenizer, "encode_batch") else \
        [tokenizer.encode(p) for p in prompts]
    prompt_ids = [completion_prompt(ids, budget, bos).ids for ids in encoded]
    row_seeds = expand_seeds(seeds, len(prompts), n, params.seed)
    return decode_batch(model, tokenizer, prompt_ids, params, row_seeds, n, on_token)


def generate(model, tokenizer, prompt: str, params: SamplingParams | None = None,
             on_text: Callable[[str], None] | None = None, capabilities: dict | None = None) -> str:
    """Complete one prompt; returns the completion text (cut at the first stop string). `on_text` streams it."""
    params = params or SamplingParams()

    def on_token(event: TokenEvent):
        if on_text is not None and event.text:
            on_text(event.text)

    seeds = None if params.seed is None else [params.seed]
    return generate_batch(model, tokenizer, [prompt], params, seeds, 1, on_token, capabilities)[0][0].text

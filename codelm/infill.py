"""Infilling: the middle between a prefix and a suffix, two ways.

fim  a fill-in-the-middle prompt (Bavarian et al. 2022, arXiv 2207.14255), decoded left to right until end-of-text:
         PSM  <l2r> <PRE> prefix <SUF> suffix <MID>  -> middle <EOT>
         SPM  <l2r> <PRE> <SUF> suffix <MID> prefix  -> middle <EOT>      (SPM variant 2, appendix D)
     the token layout of codelm.objectives.FillInTheMiddle. With n samples, `best_of` ranks them the way the FIM paper
     recommends (section 5.3): samples that ended with end-of-text first, then by likelihood.
     An imported model that codelm never trained for FIM but whose tokenizer carries a family's sentinels (StarCoder,
     Code Llama, DeepSeek-Coder, Qwen2.5-Coder: codelm.prompts.FIM_TEMPLATES) infills with its family's template.

mim  meet-in-the-middle decoding (Nguyen et al. 2023, arXiv 2303.07295, section 3.3): the forward direction generates
     from `<l2r> prefix` while the backward direction generates, reversed, from `<r2l> reversed(suffix)`, one token
     each per step, as one batch of two rows. When the newest n = 4 tokens of one side appear in what the other side
     knows (its generation, or the boundary of its given context: the forward side generating the start of the
     suffix), the join is verified by teacher-forcing the other side's tokens through the proposing side in the next
     pass (greedy agreement, as in speculative decoding, so verification costs no extra step); a partial match
     fast-forwards the side by the agreeing tokens. The infill is the forward tokens up to the join plus the
     re-reversed backward tokens. If the sides never meet, the more likely complete generation wins.

The join logic (`propose_join`, `count_agreeing`, `meet_in_the_middle`) is pure over token lists and a two-row
`step` backend, so it is tested on scripted token streams without a model (tests/test_infill.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Protocol, Sequence

import torch

from codelm.errors import CapabilityError, ConfigError
from codelm.generate import (Completion, SamplingParams, bos_id, decode_batch, expand_seeds, left_pad,
                             make_generators, mask_unused_vocab, sample_tokens)
from codelm.prompts import (FIM_FORMATS, FIM_TEMPLATES, document_head, family_fim_prompt, family_stop_ids, fim_prompt,
                            require_family_format)
from codelm.stops import cut_at_stop, find_stop
from codelm.terms import ENDED_CLEANLY, EOT, FIM, FIM_FORMATS_KEY, INFILL_MODES, LENGTH, MET, STOP, can



# ----------------------------------------------------------------------------------------------------------------
# Capabilities
# ----------------------------------------------------------------------------------------------------------------
def family_template(tokenizer, capabilities: dict | None) -> str | None:
    """The model family whose FIM template (codelm.prompts.FIM_TEMPLATES) the model infills with instead of codelm's
    layout: a model imported from Hugging Face that codelm never trained for FIM, whose tokenizer carries the
    family's sentinels (StarCoder's, Code Llama's, ...), and not because `codelm import-hf --add-tokens fim` added
    them untrained. (A model codelm trained from scratch on such a tokenizer never saw the family's template.)"""
    caps = capabilities or {}
    family = getattr(tokenizer, "fim_family", None)
    if caps.get(can(FIM)) or not caps.get("imported_from") or family is None:
        return None
    added = set(caps.get("added_tokens") or ())
    if any(s in added or "\u2581" + s in added for s in FIM_TEMPLATES[family].sentinels):
        return None
    return family


def require_mode(capabilities: dict | None, mode: str, fim_format: str = "psm", tokenizer=None) -> None:
    """Refuse an infilling mode the checkpoint was never trained for (its capabilities record can_fim/can_mim); FIM
    with an imported model's own family template (`family_template`, given the tokenizer) needs no training."""
    if mode not in INFILL_MODES:
        raise ConfigError(f"unknown infill mode {mode!r}; choose from {', '.join(INFILL_MODES)}")
    caps = capabilities or {}
    if mode == FIM and (family := family_template(tokenizer, caps)) is not None:
        require_family_format(family, fim_format, "this model")
        return
    trained = caps.get("objectives", {})
    if not caps.get(can(mode), False):
        what = ", ".join(f"{k}:{v:g}" for k, v in trained.items()) if trained else "unknown objectives"
        raise CapabilityError(f"this model was not trained for {mode} infilling (trained with {what}); "
                              f"train with --objective {mode} or a mixture such as mim:0.5,fim:0.5")
    if mode == FIM:
        formats = caps.get(FIM_FORMATS_KEY) or list(FIM_FORMATS)
        if fim_format not in formats:
            raise CapabilityError(f"this model was trained on FIM formats {formats}, not {fim_format!r}")


# ----------------------------------------------------------------------------------------------------------------
# FIM prompts
# ----------------------------------------------------------------------------------------------------------------
def best_of(samples: Sequence[Completion]) -> Completion:
    """EOT-aware best-of-n (FIM paper section 5.3): a sample that ended cleanly beats one cut off by the length
    limit; among equals the higher mean log-probability wins."""
    if not samples:
        raise ValueError("best_of needs at least one sample")
    return max(samples, key=lambda c: (c.finish_reason in ENDED_CLEANLY, c.mean_logprob))


@torch.no_grad()
def fim_infill(model, tokenizer, prefixes: Sequence[str], suffixes: Sequence[str], params: SamplingParams,
               seeds=None, n: int = 1, fim_format: str = "psm", capabilities: dict | None = None,
               on_token=None) -> list[list[Completion]]:
    """n FIM middles for each (prefix, suffix), decoded as one batch; a middle ends at end-of-text. An imported
    model infills with its family's template (`family_template`), ending at the family's end-of-middle tokens."""
    if len(prefixes) != len(suffixes):
        raise ConfigError(f"got {len(prefixes)} prefixes and {len(suffixes)} suffixes")
    budget = model.config.context_length - 1  # room for one new token
    family, end_ids = family_template(tokenizer, capabilities), None
    if family is not None:
        prompts = [family_fim_prompt(tokenizer.encode, tokenizer.vocab, tokenizer.head, family, prefix, suffix,
                                     budget, fim_format).ids for prefix, suffix in zip(prefixes, suffixes)]
        end_ids = family_stop_ids(tokenizer.vocab, family, (tokenizer.eot_id,))
    else:
        bos = bos_id(tokenizer, capabilities)
        prompts = [fim_prompt(tokenizer, prefix, suffix, budget, fim_format, bos).ids
                   for prefix, suffix in zip(prefixes, suffixes)]
    return decode_batch(model, tokenizer, prompts, params, expand_seeds(seeds, len(prompts), n, params.seed), n,
                        on_token, end_ids)


# ----------------------------------------------------------------------------------------------------------------
# Meet in the middle: pure join logic
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Join:
    """A proposed meeting point. `candidate` are the tokens the proposing side must reproduce next (in its own
    generation order) for the join to hold; `middle` is the infill, in text order, if all of them are accepted."""
    candidate: list[int]
    middle: list[int]


def find_ngram(seq: Sequence[int], gram: Sequence[int]) -> list[int]:
    """Start indices of every occurrence of `gram` in `seq`."""
    n = len(gram)
    first = gram[0]
    return [j for j in range(len(seq) - n + 1) if seq[j] == first and list(seq[j:j + n]) == list(gram)]


def propose_join(context: Sequence[int], generated: Sequence[int], other_generated: Sequence[int],
                 other_context: Sequence[int], n: int = 4, confirm: int = 1) -> Join | None:
    """Side A's newest n tokens found in what side B knows, written for the forward side:

        document = context + generated + ... + reversed(other_generated) + other_context
                   (prefix)  (forward)         (backward, re-reversed)       (suffix)

    If the newest n tokens of `context + generated` (at least one of them generated) occur at index j of
    `known = reversed(other_generated) + other_context`, the document would be `context + generated + known[j+n:]`,
    so the middle is `generated + known[j+n:]` minus the suffix. To check it, side A must reproduce the rest of B's
    generation and `confirm` tokens of B's context (where the middle meets it). The backward side proposes through
    the same function on the mirrored problem (see `propose_backward_join`). Occurrences are tried from the left. An
    occurrence that reaches into B's context claims that A's newest tokens *are* the start of that context; it is no
    join unless A produced the context from its very first token: n-grams recur (`merged[key] = merged.get(...)`
    before `return merged`), and a match further inside the context would silently drop what A skipped."""
    if not generated or n <= 0:
        return None
    mine = list(context) + list(generated)
    if len(mine) < n:
        return None
    gram = mine[-n:]
    known = list(reversed(other_generated)) + list(other_context)
    nb = len(other_generated)
    for j in find_ngram(known, gram):
        middle_len = len(generated) + nb - j - n
        if middle_len < 0 or list(generated[middle_len:]) != known[nb:j + n]:
            continue  # A would end inside B's context without having produced its start
        middle = (list(generated) + known[j + n:nb])[:middle_len]
        candidate = known[j + n:nb + confirm]  # empty once A has already produced the confirming tokens
        return Join(candidate, middle)
    return None


def propose_forward_join(prefix, forward, backward, suffix, n: int = 4, confirm: int = 1) -> Join | None:
    return propose_join(prefix, forward, backward, suffix, n, confirm)


def propose_backward_join(prefix, forward, backward, suffix, n: int = 4, confirm: int = 1) -> Join | None:
    """The backward side's newest n tokens found in `prefix + forward`: the forward join of the mirrored document.
    The candidate is in the backward side's (reversed) order; the middle is returned in text order."""
    join = propose_join(list(reversed(suffix)), backward, forward, list(reversed(prefix)), n, confirm)
    return None if join is None else Join(join.candidate, list(reversed(join.middle)))


def count_agreeing(candidate: Sequence[int], predictions: Sequence[int]) -> int:
    """How many leading candidate tokens the model agrees with: predictions[i] is its greedy choice after the
    candidate's first i tokens (teacher-forced)."""
    k = 0
    while k < len(candidate) and k < len(predictions) and candidate[k] == predictions[k]:
        k += 1
    return k


class StepResult(NamedTuple):
    """One side's outcome of a pass: how many candidate tokens were accepted, the next (sampled) token after them,
    and the log-probabilities of the accepted tokens followed by the next token's."""
    accepted: int
    next_token: int
    logprobs: list[float]


class TwoSides(Protocol):
    """A backend that runs both directions: row 0 forward, row 1 backward."""

    def prefill(self) -> list[StepResult]:
        """Read both contexts; the first token of each side."""
        ...

    def step(self, feeds: list[list[int] | None]) -> list[StepResult | None]:
        """One pass. feeds[r] = [the side's newest token, *candidate] (None: the side is finished). The backend
        accepts the longest agreeing candidate prefix (count_agreeing over its greedy predictions), samples the next
        token after it, and forgets the rejected tokens."""
        ...


@dataclass
class MimResult:
    text: str
    token_ids: list[int]        # the middle, in text order
    met: bool                   # the sides met (False: the fallback picked one side's complete generation)
    steps: int                  # sequential model passes, the prefill included
    finish_reason: str          # MET, or the chosen side's: EOT, STOP, LENGTH (codelm.terms)
    side: str                   # "join", "forward" or "backward"
    logprob: float = 0.0        # mean log-probability of the chosen side's tokens (fallback only)
    forward_tokens: int = 0     # tokens each side generated (accepted ones included)
    backward_tokens: int = 0
    extra: dict = field(default_factory=dict)


def meet_in_the_middle(sides: TwoSides, prefix: Sequence[int], suffix: Sequence[int], *, eot_id: int,
                       max_new_tokens: int, decode: Callable[[list[int]], str], stop: Sequence[str] = (),
                       ngram: int = 4, confirm: int = 1) -> MimResult:
    """Meet-in-the-middle decoding over a two-row backend (ARCHITECTURE.md; MIM paper section 3.3).

    Each side stops at end-of-text, at `max_new_tokens`, or at a stop string: the forward side at the first stop in
    its text, the backward side (mirrored) at a stop anywhere in its re-reversed text. A finished side still serves
    as the other side's target. Joins are checked after every pass; a proposal rides along with the proposing side's
    next decoding step (its newest token, then the candidate), so verifying costs no extra pass."""
    prefix, suffix = list(prefix), list(suffix)
    fw, bw = side = (Side(backward=False), Side(backward=True))
    first = sides.prefill()
    steps = 1
    for s in (0, 1):
        side[s].take(first[s], [], eot_id, max_new_tokens, decode, stop)
    while True:
        # a side that ends the document where the other side's context is only the document's end (an empty
        # suffix that runs to the end of the file) has generated that whole context: the boundary join
        if fw.reason == EOT and suffix == [eot_id]:
            return _met(Join([], list(fw.tokens)), steps, side, decode)
        if bw.reason == EOT and prefix == [eot_id]:
            return _met(Join([], list(reversed(bw.tokens))), steps, side, decode)
        joins = [propose_forward_join(prefix, fw.tokens, bw.tokens, suffix, ngram, confirm),
                 propose_backward_join(prefix, fw.tokens, bw.tokens, suffix, ngram, confirm)]
        for s in (0, 1):  # the sides already overlap up to the other's context: nothing left to verify
            if joins[s] is not None and not joins[s].candidate:
                return _met(joins[s], steps, side, decode)
        if fw.reason is not None and bw.reason is not None:
            return _fallback(side, steps, decode, stop)
        # a side verifies at most what its token budget allows (the candidate's positions must fit the context)
        candidates = [[] if joins[s] is None else
                      joins[s].candidate[:max(0, max_new_tokens + confirm - len(side[s].tokens))] for s in (0, 1)]
        feeds = [None if side[s].reason is not None else [side[s].tokens[-1]] + candidates[s] for s in (0, 1)]
        results = sides.step(feeds)
        steps += 1
        for s in (0, 1):
            if results[s] is None:
                continue
            accepted = candidates[s][:results[s].accepted]
            if joins[s] is not None and len(accepted) == len(joins[s].candidate):
                return _met(joins[s], steps, side, decode)
            side[s].take(results[s], accepted, eot_id, max_new_tokens, decode, stop)


@dataclass
class Side:
    """One direction's progress: its tokens in its own order (the last one not yet read by the model), their
    log-probabilities, and why it ended (None while it runs)."""
    backward: bool
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    reason: str | None = None

    def take(self, result: StepResult, accepted: list[int], eot_id: int, max_new_tokens: int, decode,
             stop: Sequence[str]) -> None:
        """Append the accepted tokens and the next token, or finish the side."""
        self.tokens.extend(accepted)
        self.logprobs.extend(result.logprobs[:len(accepted)])
        if result.next_token == eot_id:
            self.reason = EOT
            return
        self.tokens.append(result.next_token)
        self.logprobs.append(result.logprobs[len(accepted)])
        if stop and find_stop(decode(self.text_order()), stop) >= 0:
            self.reason = STOP
        elif len(self.tokens) >= max_new_tokens:
            self.reason = LENGTH

    def text_order(self) -> list[int]:
        return list(reversed(self.tokens)) if self.backward else self.tokens

    def mean_logprob(self) -> float:
        return sum(self.logprobs) / len(self.logprobs) if self.logprobs else float("-inf")

    def cut_text(self, text: str, stop: Sequence[str]) -> str:
        """Forward: text before the first stop string. Backward (mirrored): text after the last one."""
        if not stop:
            return text
        if not self.backward:
            return cut_at_stop(text, stop)[0]
        ends = [text.rfind(x) + len(x) for x in stop if x and text.rfind(x) >= 0]
        return text[max(ends):] if ends else text


def _met(join: Join, steps: int, side: tuple[Side, Side], decode) -> MimResult:
    return MimResult(decode(join.middle), list(join.middle), True, steps, MET, "join",
                     forward_tokens=len(side[0].tokens), backward_tokens=len(side[1].tokens))


def _fallback(side: tuple[Side, Side], steps: int, decode, stop: Sequence[str] = ()) -> MimResult:
    """The sides never met: the more likely complete generation (ended by end-of-text or a stop) wins; a side cut
    off by the length limit only wins when neither ended cleanly."""
    s = max((0, 1), key=lambda s: (side[s].reason in ENDED_CLEANLY, bool(side[s].tokens), side[s].mean_logprob()))
    chosen = side[s]
    tokens = chosen.text_order()
    return MimResult(chosen.cut_text(decode(tokens), stop), tokens, False, steps, chosen.reason or LENGTH,
                     ("forward", "backward")[s], chosen.mean_logprob(), len(side[0].tokens), len(side[1].tokens))


# ----------------------------------------------------------------------------------------------------------------
# Meet in the middle: the model backend
# ----------------------------------------------------------------------------------------------------------------
class ModelSides:
    """Both directions of one model as a batch of two rows over one KV cache.

    Rows advance by different numbers of tokens per pass (one side verifies a candidate while the other decodes one
    token), so each row keeps its own rotary positions and a key mask over cache slots: a row's padding and its
    rejected candidate tokens stay in the cache but are masked out, and slots past the longest accepted row are
    reused by the next pass."""

    def __init__(self, model, forward_ids: list[int], backward_ids: list[int], params: SamplingParams,
                 generators, n_vocab: int, max_new_tokens: int):
        self.model, self.params, self.generators, self.n_vocab = model, params, generators, n_vocab
        self.device = next(model.parameters()).device
        self.contexts = [forward_ids, backward_ids]
        # slots: the contexts, both sides' tokens, and one in-flight candidate of up to a side's whole budget
        self.slots = max(len(forward_ids), len(backward_ids)) + 3 * max_new_tokens + 8
        self.key_padding = torch.zeros(2, self.slots, dtype=torch.bool, device=self.device)
        self.next_pos = [len(forward_ids), len(backward_ids)]

    def prefill(self) -> list[StepResult]:
        ids, real, positions = left_pad(self.contexts)
        T = ids.shape[1]
        self.model.setup_cache(2, self.slots)
        self.key_padding[:, :T] = real.to(self.device)
        hidden = self.model(ids.to(self.device), positions=positions.to(self.device),
                            key_padding=self.key_padding[:, :T], return_hidden=True)
        logits = self.model.output_logits(hidden[:, -1])
        return [self._next(r, logits[r], 0, []) for r in (0, 1)]

    def step(self, feeds: list[list[int] | None]) -> list[StepResult | None]:
        start = self.model.cache_length
        T = max(len(f) for f in feeds if f)
        if start + T > self.slots:
            raise RuntimeError("meet-in-the-middle ran out of KV cache slots")  # sized so that this cannot happen
        ids = torch.zeros(2, T, dtype=torch.long)
        positions = torch.zeros(2, T, dtype=torch.long)
        limit = self.model.config.context_length - 1
        for r, feed in enumerate(feeds):
            if feed:
                ids[r, :len(feed)] = torch.tensor(feed)
                self.key_padding[r, start:start + len(feed)] = True
            positions[r] = (self.next_pos[r] + torch.arange(T)).clamp(max=limit)
        logits = self.model(ids.to(self.device), positions=positions.to(self.device),
                            key_padding=self.key_padding[:, :start + T])
        results: list[StepResult | None] = []
        used = 0
        for r, feed in enumerate(feeds):
            if not feed:
                results.append(None)
                continue
            row = mask_unused_vocab(logits[r, :len(feed)], self.n_vocab)
            k = count_agreeing(feed[1:], row[:-1].argmax(-1).tolist())
            results.append(self._next(r, row[k], k, feed[1:1 + k], row[:k]))
            self.key_padding[r, start + 1 + k:start + T] = False  # the rejected candidate tokens
            self.next_pos[r] += 1 + k
            used = max(used, 1 + k)
        self.key_padding[:, start + used:] = False
        self.model.truncate_cache(start + used)  # reuse the slots no row kept
        return results

    def _next(self, r: int, logits: torch.Tensor, k: int, accepted: list[int],
              accepted_logits: torch.Tensor | None = None) -> StepResult:
        logits = mask_unused_vocab(logits.unsqueeze(0), self.n_vocab)
        token = int(sample_tokens(logits, self.params, [self.generators[r]])[0])
        lps = []
        if k:
            lps = torch.log_softmax(accepted_logits.float(), -1).gather(
                -1, torch.tensor(accepted, device=self.device).view(-1, 1)).squeeze(-1).tolist()
        lps.append(float(torch.log_softmax(logits[0].float(), -1)[token]))
        return StepResult(k, token, lps)


def mim_contexts(tokenizer, prefix: str, suffix: str, context_length: int, max_new_tokens: int,
                 capabilities: dict | None = None, suffix_ends_document: bool = True,
                 prefix_starts_document: bool = True) -> tuple[list[int], list[int], list[int], list[int]]:
    """(prefix ids, suffix ids as the sides know them, forward context, backward context). Each side's context is
    its marker and its text (reversed for the backward side), trimmed from the far end so the side can still
    generate max_new_tokens. A document is bounded by end-of-text on both sides in training, so a suffix that runs
    to the end of the document (an editor's file, a benchmark's function) is followed by it (read backwards, a
    document starts with its end-of-text; without it an empty or short suffix leaves the backward side guessing
    where it is), and a prefix that is the document's beginning is preceded by it (`document_head`). A side trimmed
    at its far end gets none."""
    l2r, r2l = bos_id(tokenizer, capabilities, "l2r"), bos_id(tokenizer, capabilities, "r2l")
    if r2l is None:
        raise CapabilityError("this model has no right-to-left marker; meet-in-the-middle needs a mim-trained model")
    room = max(1, context_length - 4 - max_new_tokens)  # marker, end-of-text, a confirm token, one spare
    pre_ids, suf_ids = tokenizer.encode(prefix), tokenizer.encode(suffix)
    pre = document_head(tokenizer, None, prefix_starts_document and len(pre_ids) <= room) + pre_ids[-room:]
    suf = suf_ids[:room] + ([tokenizer.eot_id] if suffix_ends_document and len(suf_ids) <= room else [])
    forward = ([l2r] if l2r is not None else []) + pre
    backward = [r2l] + list(reversed(suf))
    return pre, suf, forward, backward


@torch.inference_mode()
def mim_infill(model, tokenizer, prefix: str, suffix: str, params: SamplingParams, seed: int | None = None,
               capabilities: dict | None = None, ngram: int = 4, confirm: int = 1,
               suffix_ends_document: bool = True, prefix_starts_document: bool = True) -> MimResult:
    """One middle by meet-in-the-middle decoding."""
    limit = model.config.context_length
    max_new = max(1, min(params.max_new_tokens, limit - 2))
    pre, suf, fwd_ctx, bwd_ctx = mim_contexts(tokenizer, prefix, suffix, limit, max_new, capabilities,
                                              suffix_ends_document, prefix_starts_document)
    seed = params.seed if seed is None else seed
    device = next(model.parameters()).device
    generators = make_generators([seed, None if seed is None else seed + 1], device)
    sides = ModelSides(model, fwd_ctx, bwd_ctx, params, generators, tokenizer.n_vocab, max_new)
    try:
        return meet_in_the_middle(sides, pre, suf, eot_id=tokenizer.eot_id, max_new_tokens=max_new,
                                  decode=tokenizer.decode, stop=params.stop, ngram=ngram, confirm=confirm)
    finally:
        model.clear_cache()


# ----------------------------------------------------------------------------------------------------------------
# One entry point
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class Infill:
    """n middles for one (prefix, suffix); `best` is the FIM paper's pick (fim) or the single result (mim)."""
    mode: str
    samples: list[Completion]
    best: Completion
    steps: list[int]            # sequential model passes per sample (prefill included)
    met: list[bool]             # mim: whether the sides met, per sample (fim: all False)


def infill(model, tokenizer, prefix: str, suffix: str, mode: str = "fim", params: SamplingParams | None = None,
           n: int = 1, seeds: Sequence[int] | None = None, capabilities: dict | None = None,
           fim_format: str = "psm") -> Infill:
    """The middle between prefix and suffix by `mode` ("fim" or "mim"), refusing a mode the model was not trained
    for. With n > 1, fim samples decode as one batch and mim runs once per seed."""
    params = params or SamplingParams()
    require_mode(capabilities, mode, fim_format, tokenizer)
    if mode == FIM:
        row_seeds = None if seeds is None else [list(seeds)]
        samples = fim_infill(model, tokenizer, [prefix], [suffix], params, row_seeds, n, fim_format, capabilities)[0]
        cut = samples  # decode_batch already cut each text at its first stop string
        steps = [c.passes for c in cut]  # one per token (end-of-text included), fewer with prompt-lookup drafts
        return Infill(mode, cut, best_of(cut), steps, [False] * len(cut))
    seeds = list(seeds) if seeds is not None else [None if params.seed is None else params.seed + j for j in range(n)]
    results = [mim_infill(model, tokenizer, prefix, suffix, params, seeds[j], capabilities) for j in range(n)]
    samples = [_mim_completion(r, params.stop) for r in results]
    best = max(zip(samples, results), key=lambda p: (p[1].met, p[0].finish_reason != LENGTH, p[1].logprob))[0]
    return Infill(mode, samples, best, [r.steps for r in results], [r.met for r in results])


def _mim_completion(r: MimResult, stop: Sequence[str]) -> Completion:
    text, stopped = cut_at_stop(r.text, stop)
    return Completion(text, r.token_ids, [], STOP if stopped else r.finish_reason)

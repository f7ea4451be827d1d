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
     each per step, as two rows of one batch. When the newest n = 4 tokens of one side appear in what the other side
     knows (its generation, or the boundary of its given context: the forward side generating the start of the
     suffix), the join is verified by teacher-forcing the other side's tokens through the proposing side in the next
     pass (greedy agreement, as in speculative decoding, so verification costs no extra step); a partial match
     fast-forwards the side by the agreeing tokens. The infill is the forward tokens up to the join plus the
     re-reversed backward tokens. If the sides never meet, the more likely complete generation wins. Many problems
     decode as one batch (`mim_infill_batch`), each giving what it gives alone.

The join logic (`propose_join`, `count_agreeing`, `MimSearch`) is pure over token lists and a `step` backend, so it
is tested on scripted token streams without a model (tests/test_infill.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Protocol, Sequence

import torch

from codelm.errors import CapabilityError, ConfigError
from codelm.generate import (Completion, SamplingParams, bos_id, decode_batch, expand_seeds, left_pad,
                             make_generators, mask_unused_vocab, sample_tokens, token_logprobs)
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
    """A backend that runs both directions of one problem: row 0 forward, row 1 backward."""

    def prefill(self) -> list[StepResult]:
        """Read both contexts; the first token of each side."""
        ...

    def step(self, feeds: list[list[int] | None]) -> list[StepResult | None]:
        """One pass. feeds[r] = [the side's newest token, *candidate] (None: the side is finished). The backend
        accepts the longest agreeing candidate prefix (count_agreeing over its greedy predictions), samples the next
        token after it, and forgets the rejected tokens."""
        ...


class SideRows(Protocol):
    """A backend that runs both directions of many problems as one batch: rows 2p (forward) and 2p + 1 (backward)
    of problem p at first; rows leave as their side or problem finishes (`keep`), the others keep their order."""

    def prefill(self) -> list[StepResult]:
        """Read every row's context; the first token of each."""
        ...

    def keep(self, rows: list[int]) -> None:
        """Drop every row not listed (indices into the current rows, in order)."""
        ...

    def step(self, feeds: list[list[int]]) -> list[StepResult]:
        """One pass over the current rows, as TwoSides.step for every row (each row has a feed)."""
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

    def completion(self, stop: Sequence[str] = ()) -> Completion:
        """As a Completion, its text cut at the first stop string (the shape FIM's samples have)."""
        text, stopped = cut_at_stop(self.text, stop)
        return Completion(text, self.token_ids, [], STOP if stopped else self.finish_reason, self.steps)


class MimSearch:
    """One problem's meet-in-the-middle decoding as a state machine over model passes (ARCHITECTURE.md; MIM paper
    section 3.3), so that one driver runs it over two rows (`meet_in_the_middle`) and another over many problems
    in one batch (`meet_in_the_middle_batch`) with the same decisions.

    Each side stops at end-of-text, at `max_new_tokens`, or at a stop string: the forward side at the first stop in
    its text, the backward side (mirrored) at a stop anywhere in its re-reversed text. A finished side still serves
    as the other side's target. Joins are checked after every pass; a proposal rides along with the proposing side's
    next decoding step (its newest token, then the candidate), so verifying costs no extra pass.

    `start(first tokens)` and `advance(pass results)` return the result once the problem is decided, else None;
    `feeds` is then what each side feeds the next pass (None: that side is finished)."""

    def __init__(self, prefix: Sequence[int], suffix: Sequence[int], *, eot_id: int, max_new_tokens: int,
                 decode: Callable[[list[int]], str], stop: Sequence[str] = (), ngram: int = 4, confirm: int = 1):
        self.prefix, self.suffix = list(prefix), list(suffix)
        self.eot_id, self.max_new_tokens, self.decode, self.stop = eot_id, max_new_tokens, decode, stop
        self.ngram, self.confirm = ngram, confirm
        self.side = (Side(backward=False), Side(backward=True))
        self.steps = 0
        self.joins: list[Join | None] = [None, None]
        self.candidates: list[list[int]] = [[], []]
        self.feeds: list[list[int] | None] = [None, None]

    def start(self, first: Sequence[StepResult]) -> MimResult | None:
        """The prefill's first token of each side."""
        self.steps = 1
        for s in (0, 1):
            self._take(s, first[s], [])
        return self._plan()

    def advance(self, results: Sequence[StepResult | None]) -> MimResult | None:
        """One pass's results (None for a side that did not feed)."""
        self.steps += 1
        for s in (0, 1):
            if results[s] is None:
                continue
            accepted = self.candidates[s][:results[s].accepted]
            if self.joins[s] is not None and len(accepted) == len(self.joins[s].candidate):
                return _met(self.joins[s], self.steps, self.side, self.decode)
            self._take(s, results[s], accepted)
        return self._plan()

    def _take(self, s: int, result: StepResult, accepted: list[int]) -> None:
        self.side[s].take(result, accepted, self.eot_id, self.max_new_tokens, self.decode, self.stop)

    def _plan(self) -> MimResult | None:
        """Decide, or set the next pass's feeds."""
        fw, bw = side = self.side
        prefix, suffix, decode = self.prefix, self.suffix, self.decode
        # a side that ends the document where the other side's context is only the document's end (an empty
        # suffix that runs to the end of the file) has generated that whole context: the boundary join
        if fw.reason == EOT and suffix == [self.eot_id]:
            return _met(Join([], list(fw.tokens)), self.steps, side, decode)
        if bw.reason == EOT and prefix == [self.eot_id]:
            return _met(Join([], list(reversed(bw.tokens))), self.steps, side, decode)
        joins = [propose_forward_join(prefix, fw.tokens, bw.tokens, suffix, self.ngram, self.confirm),
                 propose_backward_join(prefix, fw.tokens, bw.tokens, suffix, self.ngram, self.confirm)]
        for s in (0, 1):  # the sides already overlap up to the other's context: nothing left to verify
            if joins[s] is not None and not joins[s].candidate:
                return _met(joins[s], self.steps, side, decode)
        if fw.reason is not None and bw.reason is not None:
            return _fallback(side, self.steps, decode, self.stop)
        # a side verifies at most what its token budget allows (the candidate's positions must fit the context)
        room = [max(0, self.max_new_tokens + self.confirm - len(side[s].tokens)) for s in (0, 1)]
        self.joins = joins
        self.candidates = [[] if joins[s] is None else joins[s].candidate[:room[s]] for s in (0, 1)]
        self.feeds = [None if side[s].reason is not None else [side[s].tokens[-1]] + self.candidates[s]
                      for s in (0, 1)]
        return None


def meet_in_the_middle(sides: TwoSides, prefix: Sequence[int], suffix: Sequence[int], *, eot_id: int,
                       max_new_tokens: int, decode: Callable[[list[int]], str], stop: Sequence[str] = (),
                       ngram: int = 4, confirm: int = 1) -> MimResult:
    """Meet-in-the-middle decoding of one problem over a two-row backend (the rules: MimSearch)."""
    search = MimSearch(prefix, suffix, eot_id=eot_id, max_new_tokens=max_new_tokens, decode=decode, stop=stop,
                       ngram=ngram, confirm=confirm)
    result = search.start(sides.prefill())
    while result is None:
        result = search.advance(sides.step(search.feeds))
    return result


def meet_in_the_middle_batch(rows: SideRows, searches: Sequence[MimSearch]) -> list[MimResult]:
    """Meet-in-the-middle decoding of many problems as one batch: each pass runs every side still generating, of
    every problem still undecided; a side's row leaves the batch when the side finishes or its problem is decided.
    A problem's decisions depend only on its own rows' results, so each result is what `meet_in_the_middle` gives
    for that problem alone over the same backend."""
    owners = [(p, s) for p in range(len(searches)) for s in (0, 1)]  # the current rows: (problem, side)
    results: list[MimResult | None] = [None] * len(searches)
    first = rows.prefill() if searches else []
    for p, search in enumerate(searches):
        results[p] = search.start(first[2 * p:2 * p + 2])
    while True:
        live = [i for i, (p, s) in enumerate(owners) if results[p] is None and searches[p].feeds[s] is not None]
        if not live:
            return results
        if len(live) < len(owners):
            rows.keep(live)
            owners = [owners[i] for i in live]
        out = rows.step([searches[p].feeds[s] for p, s in owners])
        pairs: dict[int, list[StepResult | None]] = {}
        for (p, s), result in zip(owners, out):
            pairs.setdefault(p, [None, None])[s] = result
        for p, pair in pairs.items():
            results[p] = searches[p].advance(pair)


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
class ModelRows:
    """Both directions of many problems as the rows of one batch over one KV cache (a SideRows backend).

    Rows advance by different numbers of tokens per pass (a side verifying a candidate feeds it whole while the
    others feed one token), so each row keeps its own rotary positions and a key mask over cache slots: a row's
    left padding and its rejected or padded tokens stay in the cache but are masked out, and slots past the longest
    accepted row are reused by the next pass. Only the fed positions go through the output head. Row r samples with
    generators[r] only, so a sampled side depends on its seed, not on the batch."""

    def __init__(self, model, contexts: list[list[int]], params: SamplingParams, generators, n_vocab: int,
                 max_new_tokens: int):
        self.model, self.params, self.generators, self.n_vocab = model, params, list(generators), n_vocab
        self.device = next(model.parameters()).device
        self.contexts = contexts
        # slots: the contexts, a side's tokens and one in-flight candidate; grown if a batch needs more (`_reserve`)
        self.slots = max(len(c) for c in contexts) + 3 * max_new_tokens + 8
        self.key_padding = torch.zeros(len(contexts), self.slots, dtype=torch.bool, device=self.device)
        self.next_pos = torch.tensor([len(c) for c in contexts], device=self.device)

    def prefill(self) -> list[StepResult]:
        ids, real, positions = left_pad(self.contexts)
        T = ids.shape[1]
        self.model.setup_cache(len(self.contexts), self.slots)
        self.key_padding[:, :T] = real.to(self.device)
        hidden = self.model(ids.to(self.device), positions=positions.to(self.device),
                            key_padding=self.key_padding[:, :T], return_hidden=True)
        logits = mask_unused_vocab(self.model.output_logits(hidden[:, -1]), self.n_vocab)
        every = list(range(len(self.contexts)))
        return self._results(logits, every, [0] * len(every), [[]] * len(every), every)

    def keep(self, rows: list[int]) -> None:
        index = torch.tensor(rows, device=self.device)
        self.model.select_cache_rows(index)
        self.key_padding, self.next_pos = self.key_padding[index], self.next_pos[index]
        self.generators = [self.generators[r] for r in rows]

    def step(self, feeds: list[list[int]]) -> list[StepResult]:
        start = self.model.cache_length
        lengths = torch.tensor([len(f) for f in feeds], device=self.device)
        T = max(len(f) for f in feeds)
        self._reserve(start + T)
        fed = torch.arange(T, device=self.device) < lengths[:, None]  # [R, T]: the real (not padding) positions
        ids = torch.zeros(len(feeds), T, dtype=torch.long, device=self.device)
        ids[fed] = torch.tensor([t for f in feeds for t in f], device=self.device)
        positions = (self.next_pos[:, None] + torch.arange(T, device=self.device)).clamp(
            max=self.model.config.context_length - 1)
        self.key_padding[:, start:start + T] = fed
        hidden = self.model(ids, positions=positions, key_padding=self.key_padding[:, :start + T], return_hidden=True)
        logits = mask_unused_vocab(self.model.output_logits(hidden[fed]), self.n_vocab)  # [fed tokens, V], row-major
        greedy = logits.argmax(-1).tolist()
        offsets, at, ks, accepted = [], 0, [], []
        for feed in feeds:
            k = count_agreeing(feed[1:], greedy[at:at + len(feed) - 1])
            offsets.append(at)
            ks.append(k)
            accepted.append(feed[1:1 + k])
            at += len(feed)
        results = self._results(logits, [o + k for o, k in zip(offsets, ks)], ks, accepted, offsets)
        kept = torch.tensor(ks, device=self.device) + 1  # the newest token and the accepted candidate
        self.key_padding[:, start:start + T] &= torch.arange(T, device=self.device) < kept[:, None]
        self.next_pos += kept
        self.model.truncate_cache(start + max(ks) + 1)  # reuse the slots no row kept
        return results

    def _results(self, logits: torch.Tensor, next_at: list[int], ks: list[int], accepted: list[list[int]],
                 offsets: list[int]) -> list[StepResult]:
        """Sample each row's next token from logits[next_at[r]], and gather the log-probabilities of its accepted
        tokens (predicted at logits[offsets[r] + i]) and of that token."""
        tokens = sample_tokens(logits[next_at], self.params, self.generators).tolist()
        where, which = [], []
        for r, k in enumerate(ks):
            where += [offsets[r] + i for i in range(k)] + [next_at[r]]
            which += accepted[r] + [tokens[r]]
        lps = token_logprobs(logits[where], torch.tensor(which, device=logits.device)).tolist()
        out, at = [], 0
        for r, k in enumerate(ks):
            out.append(StepResult(k, tokens[r], lps[at:at + k + 1]))
            at += k + 1
        return out

    def _reserve(self, slots: int) -> None:
        """Room for `slots` cache slots: a batch's cache grows by its longest accepted row each pass, which the
        initial size covers for one problem but not for every mix of many."""
        if slots <= self.slots:
            return
        self.slots = max(slots, 2 * self.slots)
        length = self.model.cache_length
        rows = [self.model.cache_rows(r, length) for r in range(len(self.generators))]
        self.model.install_cache_rows(rows, self.slots)
        grown = torch.zeros(len(rows), self.slots, dtype=torch.bool, device=self.device)
        grown[:, :self.key_padding.shape[1]] = self.key_padding
        self.key_padding = grown


def mim_contexts(tokenizer, prefix: str, suffix: str, context_length: int, max_new_tokens: int,
                 capabilities: dict | None = None, suffix_ends_document: bool = True,
                 prefix_starts_document: bool = True) -> tuple[list[int], list[int], list[int], list[int]]:
    """(prefix ids, suffix ids as the sides know them, forward context, backward context). Each side's context is
    its marker and its text (reversed for the backward side), trimmed from the far end so the side can still
    generate max_new_tokens, or half the context length if that is less: as FIM's prompt keeps its context and
    generates in what is left (`mim_budget`). A budget as long as the context would leave each side one token of
    text, blind, as `codelm eval`'s 512-token default did on 256-token models. A document is bounded by end-of-text
    on both sides in training, so a suffix that runs to the end of the document (an editor's file, a benchmark's
    function) is followed by it (read backwards, a document starts with its end-of-text; without it an empty or short
    suffix leaves the backward side guessing where it is), and a prefix that is the document's beginning is preceded
    by it (`document_head`). A side trimmed at its far end gets none."""
    l2r, r2l = bos_id(tokenizer, capabilities, "l2r"), bos_id(tokenizer, capabilities, "r2l")
    if r2l is None:
        raise CapabilityError("this model has no right-to-left marker; meet-in-the-middle needs a mim-trained model")
    # marker, end-of-text, a confirm token, one spare
    room = max(1, context_length - 4 - min(max_new_tokens, context_length // 2))
    pre_ids, suf_ids = tokenizer.encode(prefix), tokenizer.encode(suffix)
    pre = document_head(tokenizer, None, prefix_starts_document and len(pre_ids) <= room) + pre_ids[-room:]
    suf = suf_ids[:room] + ([tokenizer.eot_id] if suffix_ends_document and len(suf_ids) <= room else [])
    forward = ([l2r] if l2r is not None else []) + pre
    backward = [r2l] + list(reversed(suf))
    return pre, suf, forward, backward


def mim_budget(context_length: int, max_new_tokens: int, contexts: Sequence[Sequence[int]], confirm: int = 1) -> int:
    """The tokens each side may generate after its context: max_new_tokens, less if the longer context leaves less
    room (every position a side reads, a confirming candidate's included, must fit the context length)."""
    return max(1, min(max_new_tokens, context_length - 1 - confirm - max(len(c) for c in contexts)))


@torch.inference_mode()
def mim_infill_batch(model, tokenizer, prefixes: Sequence[str], suffixes: Sequence[str], params: SamplingParams,
                     seeds: Sequence[int | None] | None = None, capabilities: dict | None = None, ngram: int = 4,
                     confirm: int = 1, suffix_ends_document: bool = True,
                     prefix_starts_document: bool = True) -> list[MimResult]:
    """One middle per (prefix, suffix) by meet-in-the-middle decoding, all problems as one batch (two rows each).
    seeds[p] seeds problem p (its forward side draws from seeds[p], its backward side from seeds[p] + 1; default
    params.seed), so a sampled middle depends on its seed only; greedy middles are each problem's alone. n samples
    of one problem are n problems with their own seeds."""
    if len(prefixes) != len(suffixes):
        raise ConfigError(f"got {len(prefixes)} prefixes and {len(suffixes)} suffixes")
    seeds = [params.seed] * len(prefixes) if seeds is None else list(seeds)
    if len(seeds) != len(prefixes):
        raise ConfigError(f"got {len(seeds)} seeds for {len(prefixes)} problems")
    if not prefixes:
        return []
    limit = model.config.context_length
    max_new = max(1, min(params.max_new_tokens, limit - 2))
    searches, contexts, row_seeds = [], [], []
    for prefix, suffix, seed in zip(prefixes, suffixes, seeds):
        pre, suf, fwd_ctx, bwd_ctx = mim_contexts(tokenizer, prefix, suffix, limit, max_new, capabilities,
                                                  suffix_ends_document, prefix_starts_document)
        budget = mim_budget(limit, max_new, (fwd_ctx, bwd_ctx), confirm)
        searches.append(MimSearch(pre, suf, eot_id=tokenizer.eot_id, max_new_tokens=budget, decode=tokenizer.decode,
                                  stop=params.stop, ngram=ngram, confirm=confirm))
        contexts += [fwd_ctx, bwd_ctx]
        row_seeds += [seed, None if seed is None else seed + 1]
    generators = make_generators(row_seeds, next(model.parameters()).device)
    rows = ModelRows(model, contexts, params, generators, tokenizer.n_vocab, max(s.max_new_tokens for s in searches))
    try:
        return meet_in_the_middle_batch(rows, searches)
    finally:
        model.clear_cache()


def mim_infill(model, tokenizer, prefix: str, suffix: str, params: SamplingParams, seed: int | None = None,
               capabilities: dict | None = None, ngram: int = 4, confirm: int = 1,
               suffix_ends_document: bool = True, prefix_starts_document: bool = True) -> MimResult:
    """One middle by meet-in-the-middle decoding."""
    return mim_infill_batch(model, tokenizer, [prefix], [suffix], params, [params.seed if seed is None else seed],
                            capabilities, ngram, confirm, suffix_ends_document, prefix_starts_document)[0]


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
    for. n samples decode as one batch."""
    params = params or SamplingParams()
    require_mode(capabilities, mode, fim_format, tokenizer)
    if mode == FIM:
        row_seeds = None if seeds is None else [list(seeds)]
        samples = fim_infill(model, tokenizer, [prefix], [suffix], params, row_seeds, n, fim_format, capabilities)[0]
        cut = samples  # decode_batch already cut each text at its first stop string
        steps = [c.passes for c in cut]  # one per token (end-of-text included), fewer with prompt-lookup drafts
        return Infill(mode, cut, best_of(cut), steps, [False] * len(cut))
    seeds = list(seeds) if seeds is not None else [None if params.seed is None else params.seed + j for j in range(n)]
    results = mim_infill_batch(model, tokenizer, [prefix] * n, [suffix] * n, params, seeds, capabilities)
    samples = [r.completion(params.stop) for r in results]
    best = max(zip(samples, results), key=lambda p: (p[1].met, p[0].finish_reason != LENGTH, p[1].logprob))[0]
    return Infill(mode, samples, best, [r.steps for r in results], [r.met for r in results])


def infill_batch(model, tokenizer, prefixes: Sequence[str], suffixes: Sequence[str], mode: str = "fim",
                 params: SamplingParams | None = None, n: int = 1, seeds=None, capabilities: dict | None = None,
                 fim_format: str = "psm") -> list[list[Completion]]:
    """n middles for each (prefix, suffix), all decoded as one batch by `mode`. seeds[i] seeds problem i's samples
    (an int: sample j uses seeds[i] + j; or a list of n ints), as for `fim_infill` and `generate_batch`."""
    params = params or SamplingParams()
    require_mode(capabilities, mode, fim_format, tokenizer)
    if mode == FIM:
        return fim_infill(model, tokenizer, prefixes, suffixes, params, seeds, n, fim_format, capabilities)
    row_seeds = expand_seeds(seeds, len(prefixes), n, params.seed)
    results = mim_infill_batch(model, tokenizer, [p for p in prefixes for _ in range(n)],
                               [s for s in suffixes for _ in range(n)], params, row_seeds, capabilities)
    samples = [r.completion(params.stop) for r in results]
    return [samples[i * n:(i + 1) * n] for i in range(len(prefixes))]

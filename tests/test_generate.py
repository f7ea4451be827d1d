"""Generation: sampling functions, seeds, stop strings and the stream, batching with padding, n samples per prompt."""

from __future__ import annotations

import pytest
import torch

from codelm.errors import ConfigError
from codelm.generate import (SamplingParams, TextStream, decode_batch, generate, generate_batch, left_pad,
                             logits_to_probs)
from codelm.model import ModelConfig, Transformer
from codelm.stops import StopMatcher, cut_at_stop, find_stop, stop_prefix_len

PROMPTS = ["def add(a, b):\n    return", "import os\n\nclass Config:\n    def __init__(self):", "x = [1, 2"]


@pytest.fixture(scope="module")
def model(tokenizer):
    """A random micro model: generation logic does not need a trained one (its outputs are arbitrary but fixed)."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=16448, n_layer=2, n_head=2, d_model=64, context_length=96)
    return Transformer(cfg).eval()


# --- sampling functions --------------------------------------------------------------------------------------------
def test_top_k_and_top_p_keep_the_most_likely_tokens():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    assert (logits_to_probs(logits, 1.0, 2, 1.0)[0, 2:] == 0).all()
    probs = logits_to_probs(logits, 1.0, 0, 0.7)  # softmax mass: 0.64, 0.24, ... -> the first two reach 0.7
    assert (probs[0, :2] > 0).all() and (probs[0, 2:] == 0).all()
    assert probs.sum().item() == pytest.approx(1.0)


def test_params_are_validated():
    with pytest.raises(ConfigError):
        SamplingParams(top_p=0.0)
    with pytest.raises(ConfigError):
        SamplingParams(temperature=-1)


# --- seeds ---------------------------------------------------------------------------------------------------------
def test_same_seed_same_sample_different_seed_different_sample(model, tokenizer):
    params = SamplingParams(max_new_tokens=12, temperature=1.0)
    a = generate_batch(model, tokenizer, [PROMPTS[0]], params, seeds=[7])[0][0]
    b = generate_batch(model, tokenizer, [PROMPTS[0]], params, seeds=[7])[0][0]
    c = generate_batch(model, tokenizer, [PROMPTS[0]], params, seeds=[8])[0][0]
    assert a.token_ids == b.token_ids and a.token_ids != c.token_ids


def test_a_rows_sample_depends_only_on_its_seed_not_on_the_batch(model, tokenizer):
    params = SamplingParams(max_new_tokens=12, temperature=1.0, top_p=0.95)
    alone = generate_batch(model, tokenizer, [PROMPTS[1]], params, seeds=[[11, 12]], n=2)[0]
    # the same prompt, now second in a padded batch, its samples in another order
    batched = generate_batch(model, tokenizer, [PROMPTS[2], PROMPTS[1]], params, seeds=[[1, 2], [12, 11]], n=2)[1]
    assert batched[1].token_ids == alone[0].token_ids and batched[0].token_ids == alone[1].token_ids


def test_n_samples_share_one_prefill(model, tokenizer, monkeypatch):
    import codelm.generate as g
    calls = []
    real = g.prefill
    monkeypatch.setattr(g, "prefill", lambda m, ids, *a, **k: calls.append(ids.shape) or real(m, ids, *a, **k))
    out = generate_batch(model, tokenizer, PROMPTS[:2], SamplingParams(max_new_tokens=4, temperature=1.0),
                         seeds=[0, 10], n=3)
    assert [len(o) for o in out] == [3, 3] and len(calls) == 1 and calls[0][0] == 2


# --- batching ------------------------------------------------------------------------------------------------------
def test_left_padding_gives_each_row_its_own_positions():
    ids, real, pos = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert real.tolist() == [[True, True, True], [False, False, True]]
    assert pos[0].tolist() == [0, 1, 2] and pos[1, 2].item() == 0


def test_greedy_batched_output_equals_one_by_one(model, tokenizer):
    params = SamplingParams(max_new_tokens=16)
    batched = generate_batch(model, tokenizer, PROMPTS, params)
    for prompt, [together] in zip(PROMPTS, batched):
        [[alone]] = generate_batch(model, tokenizer, [prompt], params)
        assert together.token_ids == alone.token_ids
        assert together.logprobs == pytest.approx(alone.logprobs, abs=1e-4)


def test_left_padded_prefill_logits_match_each_prompt_alone(model, tokenizer):
    from codelm.generate import prefill
    rows = [[tokenizer.l2r_id] + tokenizer.encode(p) for p in PROMPTS]
    ids, real, pos = left_pad(rows)
    with torch.no_grad():
        model.setup_cache(len(rows), ids.shape[1])
        together = prefill(model, ids, pos, real)
        model.clear_cache()
        for b, row in enumerate(rows):
            alone = model(torch.tensor([row]))[0, -1]
            assert torch.allclose(together[b], alone, atol=1e-4)


def test_generated_logprobs_are_the_models_own(model, tokenizer):
    """Teacher-forcing the prompt and the completion through the model gives the same log-probabilities (over the
    tokenizer's vocabulary: the embedding's padding rows are never valid outputs)."""
    [[c]] = generate_batch(model, tokenizer, [PROMPTS[0]], SamplingParams(max_new_tokens=8, temperature=1.0),
                           seeds=[3])
    ids = [tokenizer.l2r_id] + tokenizer.encode(PROMPTS[0])
    full = torch.tensor([ids + c.token_ids])
    with torch.no_grad():
        logits = model(full)[0]
        logits[:, tokenizer.n_vocab:] = float("-inf")
        logp = torch.log_softmax(logits, -1)
    expected = [logp[len(ids) - 1 + i, t].item() for i, t in enumerate(c.token_ids)]
    assert c.logprobs == pytest.approx(expected, abs=1e-4)


def test_the_l2r_marker_is_the_bos_token(model, tokenizer):
    """Without the marker, the same prompt would give different logits; generate adds it from the capabilities."""
    params = SamplingParams(max_new_tokens=6)
    auto = generate_batch(model, tokenizer, [PROMPTS[0]], params)[0][0]
    explicit = decode_batch(model, tokenizer, [[tokenizer.l2r_id] + tokenizer.encode(PROMPTS[0])], params, [None])
    caps = {"markers": {"l2r": tokenizer.l2r_id, "r2l": tokenizer.r2l_id}}
    with_caps = generate_batch(model, tokenizer, [PROMPTS[0]], params, capabilities=caps)[0][0]
    assert auto.token_ids == explicit[0][0].token_ids == with_caps.token_ids


# --- stop strings and the stream -----------------------------------------------------------------------------------
class CharTokenizer:
    """Scripted tokens: each id decodes to fixed bytes, so stop strings can be split across tokens at will."""

    def __init__(self, pieces: dict[int, bytes]):
        self.pieces = pieces

    def decode_bytes(self, ids):
        return b"".join(self.pieces.get(i, b"") for i in ids)


def stream_of(pieces: list[bytes], stop: list[str]):
    tok = CharTokenizer(dict(enumerate(pieces)))
    stream = TextStream(tok, stop)
    shown = []
    for i in range(len(pieces)):
        shown.append(stream.push(i))
        if stream.stopped:
            break
    shown.append(stream.finish())
    return stream, shown


def test_a_stop_string_split_across_tokens_still_stops():
    stream, shown = stream_of([b"return x", b"\n\nd", b"ef g():"], ["\ndef"])
    assert stream.stopped and stream.text == "return x\n"
    assert "".join(shown) == "return x\n"


def test_the_stream_holds_back_a_possible_stop_string_and_never_shows_past_it():
    stream, shown = stream_of([b"a = 1", b"\n", b"\nde", b"f", b" more"], ["\n\ndef"])
    # after "a = 1\n" the newline could start the stop string: held back, never shown
    assert shown[0] == "a = 1" and shown[1] == "" and shown[2] == ""
    assert "".join(shown) == "a = 1" and stream.text == "a = 1"


def test_held_back_text_is_released_when_it_turns_out_not_to_stop():
    stream, shown = stream_of([b"a\n", b"b"], ["\n\n"])
    assert shown == ["a", "\nb", ""] and not stream.stopped


def test_the_stream_never_emits_half_a_utf8_character():
    snake = "🐍".encode()  # four bytes, delivered one per token
    stream, shown = stream_of([b"x = '", snake[:1], snake[1:2], snake[2:], b"'"], [])
    assert shown == ["x = '", "", "", "🐍", "'", ""]


def test_cut_at_stop_cuts_at_the_earliest_stop_and_ignores_empty_ones():
    assert cut_at_stop("a\nclass B\ndef f", ["\ndef", "\nclass"]) == ("a", True)
    assert cut_at_stop("abc", ["", "x"]) == ("abc", False)


def _held_reference(text, stop):  # the definition, checked prefix by prefix
    return max([k for s in stop for k in range(1, len(s)) if text.endswith(s[:k])], default=0)


def test_the_stop_matcher_agrees_with_the_definitions_on_text_fed_piece_by_piece():
    import random
    rng = random.Random(0)
    for _ in range(300):
        stop = ["".join(rng.choice("ab\n") for _ in range(rng.randint(0, 6))) for _ in range(rng.randint(0, 3))]
        text = "".join(rng.choice("ab\n") for _ in range(rng.randint(0, 40)))
        matcher, fed, cut = StopMatcher(stop), 0, -1
        while fed < len(text) and cut < 0:
            fed = min(len(text), fed + rng.randint(1, 4))
            cut = matcher.feed(text[:fed])
            if cut < 0:
                assert matcher.held() == _held_reference(text[:fed], stop)
        assert cut == find_stop(text[:fed], stop)
        assert stop_prefix_len(text, stop) == _held_reference(text, stop)


def test_a_long_stop_string_costs_linear_time_not_quadratic():
    """A client may send a stop string as long as the text: checking each of its prefixes against the text's end at
    every token was quadratic in their length. The matcher reads each character once."""
    stop = ["a" * 50_000 + "b"]
    matcher = StopMatcher(stop)
    text = ""
    for _ in range(2_000):  # a stream of 2,000 tokens of 50 characters each, all on the stop's path
        text += "a" * 50
        assert matcher.feed(text) == -1
    assert matcher.held() == 50_000
    assert matcher.feed(text + "b") == len(text) - 50_000


def test_stop_prefix_len():
    assert stop_prefix_len("abc\n", ["\ndef"]) == 1
    assert stop_prefix_len("abc\nde", ["\ndef", "x"]) == 3
    assert stop_prefix_len("abc", ["\ndef"]) == 0


def test_streamed_pieces_add_up_to_the_completion_and_stop_is_reported(model, tokenizer):
    # find what the model says greedily, then stop on a string spanning its 2nd..3rd tokens
    [[free]] = generate_batch(model, tokenizer, [PROMPTS[0]], SamplingParams(max_new_tokens=8))
    text = free.text
    pieces = [tokenizer.decode([t]) for t in free.token_ids]
    stop = (pieces[1][-1:] + pieces[2][:1]) if len(pieces[1]) and len(pieces[2]) else text[2:4]
    events = []
    [[c]] = generate_batch(model, tokenizer, [PROMPTS[0]], SamplingParams(max_new_tokens=8, stop=[stop]),
                           on_token=events.append)
    assert c.finish_reason == "stop" and c.text == text[:text.find(stop)]
    assert "".join(e.text for e in events) == c.text
    assert events[-1].finished and stop not in "".join(e.text for e in events)


def test_max_new_tokens_and_length_finish(model, tokenizer):
    [[c]] = generate_batch(model, tokenizer, [PROMPTS[0]], SamplingParams(max_new_tokens=5))
    assert len(c.token_ids) <= 5
    if c.finish_reason == "length":
        assert len(c.token_ids) == 5


def test_the_callback_can_stop_a_row(model, tokenizer):
    seen = []

    def on_token(event):
        seen.append(event)
        return len(seen) < 3

    [[c]] = generate_batch(model, tokenizer, [PROMPTS[0]], SamplingParams(max_new_tokens=20), on_token=on_token)
    assert len(c.token_ids) == 3 and c.finish_reason == "stop"


def test_generate_keeps_its_first_signature(model, tokenizer):
    chunks = []
    text = generate(model, tokenizer, "def ", SamplingParams(max_new_tokens=6, temperature=0.8, seed=1),
                    on_text=chunks.append)
    assert text == "".join(chunks)
    assert text == generate(model, tokenizer, "def ", SamplingParams(max_new_tokens=6, temperature=0.8, seed=1))


def test_long_prompts_are_cut_from_the_left_to_fit_the_context(model, tokenizer):
    long_prompt = "x = 1\n" * 200  # far more than the 96-token context
    [[c]] = generate_batch(model, tokenizer, [long_prompt], SamplingParams(max_new_tokens=50))
    assert 1 <= len(c.token_ids) <= 50 and c.finish_reason in ("length", "eot")


def test_cli_sample_n_seeds_and_stop(trained_run, capsys):
    from codelm.cli import main

    args = ["sample", str(trained_run), "--prompt", "def ", "--max-new-tokens", "8", "--temperature", "1.0"]
    assert main(args + ["--n", "2", "--seeds", "5,6"]) == 0
    both = capsys.readouterr().out
    assert both.count("----- sample") == 2
    assert main(args + ["--seed", "6"]) == 0  # sample 2 above used seed 6: the same text, streamed
    second = both.split("----- sample 2/2")[1].split("\n", 1)[1]
    assert capsys.readouterr().out == second
    assert main(args + ["--n", "2", "--seeds", "5"]) == 2  # one seed for two samples
    assert "--seeds" in capsys.readouterr().err


# --- prompt-lookup decoding ------------------------------------------------------------------------------------------
def test_prompt_lookup_drafts_what_followed_the_latest_longest_match():
    from codelm.generate import PromptLookup
    lookup = PromptLookup([1, 2, 3, 9, 1, 2, 3, 7, 8, 5, 2, 3])
    assert lookup.draft(2) == [7, 8]  # "2 3" last seen before "7 8"; the longer match "5 2 3" never occurred
    lookup.extend([7])
    assert lookup.draft(3) == [8, 5, 2]  # "2 3 7" continues with "8 5 2"
    assert PromptLookup([4, 5, 6]).draft(3) == []  # nothing repeats: no draft
    assert PromptLookup([1, 2]).draft(0) == []
    # a run of one token (or a short period) overlaps its own match: the draft continues the period
    assert PromptLookup([3, 3, 3]).draft(4) == [3, 3, 3, 3]
    assert PromptLookup([5, 1, 2, 1, 2]).draft(5) == [1, 2, 1, 2, 1]


def count_forward_passes(model):
    passes = [0]
    handle = model.register_forward_pre_hook(lambda module, args: passes.__setitem__(0, passes[0] + 1))
    return passes, handle


@pytest.fixture(scope="module")
def chaotic_model():
    """A random micro model with larger weights: its greedy text wanders instead of repeating one token, so some
    drafts are rejected part-way (the repetitive `model` accepts nearly every draft)."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=16448, n_layer=2, n_head=2, d_model=64, context_length=96, init_std=0.15)
    return Transformer(cfg).eval()


@pytest.mark.parametrize("which", ["repetitive", "chaotic"])
@pytest.mark.parametrize("params", [
    dict(max_new_tokens=40),
    dict(max_new_tokens=7),
    dict(max_new_tokens=40, stop=["__STOP__"]),  # replaced below by a string the output contains
])
def test_lookup_decoding_gives_one_token_decodings_output(model, chaotic_model, tokenizer, params, which,
                                                          monkeypatch):
    """Drafted tokens are kept only where greedy decoding agrees, so the tokens, log-probabilities, finish reason
    and streamed pieces equal one-token-per-pass decoding; on repetitive text it takes fewer passes."""
    import codelm.generate as generate_module
    model = model if which == "repetitive" else chaotic_model
    prompt = "x = 1\ny = 2\nx = 1\ny = 2\nx = 1\ny = 2\nx = 1\ny ="
    if params.get("stop"):
        [[free]] = generate_batch(model, tokenizer, [prompt], SamplingParams(max_new_tokens=40, lookup_draft=0))
        params = dict(params, stop=[free.text[len(free.text) // 2:len(free.text) // 2 + 3]])
    verified = []  # (draft length, accepted) of every pass

    def spy(*args):
        logits, accepted = verify(*args)
        verified.append((len(args[2]), accepted))
        return logits, accepted
    verify = generate_module.verify_draft
    monkeypatch.setattr(generate_module, "verify_draft", spy)
    runs = {}
    for draft in (0, 4):
        passes, handle = count_forward_passes(model)
        events = []
        try:
            [[c]] = generate_batch(model, tokenizer, [prompt], SamplingParams(lookup_draft=draft, **params),
                                   on_token=events.append)
        finally:
            handle.remove()
        runs[draft] = c, [(e.token_id, e.text, e.finished, e.finish_reason) for e in events], passes[0]
    (plain, plain_events, plain_passes), (looked, looked_events, looked_passes) = runs[0], runs[4]
    assert looked.token_ids == plain.token_ids and looked.text == plain.text
    assert looked.finish_reason == plain.finish_reason
    assert looked.logprobs == pytest.approx(plain.logprobs, abs=1e-4)
    assert looked_events == plain_events
    assert (plain.passes, looked.passes) == (plain_passes, looked_passes)  # what a completion reports is true
    assert plain.passes == len(plain.token_ids) + (plain.finish_reason == "eot")  # one pass per token
    if which == "repetitive" and len(plain.token_ids) > 4:
        assert looked_passes < plain_passes
    if which == "chaotic" and params["max_new_tokens"] == 40 and not params.get("stop"):
        assert any(0 < n and accepted < n for n, accepted in verified)  # the case exercises rejected drafts


def test_lookup_decoding_stops_at_the_context_end_and_when_the_callback_says_so(model, tokenizer):
    limit = model.config.context_length
    prompt = "a = b\n" * 40  # longer than the context: cut from the left, leaving one token of room
    outputs = []
    for draft in (0, 4):
        [[c]] = generate_batch(model, tokenizer, [prompt], SamplingParams(max_new_tokens=50, lookup_draft=draft))
        assert c.finish_reason in ("length", "eot") and len(c.token_ids) <= limit
        assert len(c.token_ids) == (c.finish_reason == "length")  # exactly the room left, or end-of-text at once
        outputs.append(c.token_ids)
        seen = []
        [[d]] = generate_batch(model, tokenizer, ["x = 1\nx = 1\nx = 1\nx ="],
                               SamplingParams(max_new_tokens=30, lookup_draft=draft),
                               on_token=lambda e: seen.append(e) or len(seen) < 5)
        assert len(d.token_ids) == 5 and d.finish_reason == "stop"
    assert outputs[0] == outputs[1]

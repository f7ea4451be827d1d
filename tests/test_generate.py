"""Generation: sampling functions, seeds, stop strings and the stream, batching with padding, n samples per prompt."""

from __future__ import annotations

import pytest
import torch

from codelm.errors import ConfigError
from codelm.generate import (SamplingParams, TextStream, decode_batch, generate, generate_batch, left_pad,
                             logits_to_probs, stop_prefix_len)
from codelm.model import ModelConfig, Transformer

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

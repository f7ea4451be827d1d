"""Objectives: every transform and loss on hand-computed cases (l2r, fim, mim, sft, mixtures)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from codelm.errors import ConfigError, DataError
from codelm.objectives import (IGNORE, Batch, CompletionOnly, FillInTheMiddle, LeftToRight, MeetInTheMiddle,
                               build_objectives, fim_split_text, mim_loss, next_token_loss, parse_mixture,
                               read_completion_examples, split_segments, total_variation)
from support import micro_train_config


class FixedLogits(torch.nn.Module):
    """A 'model' whose logits are a parameter, whatever the input: lets tests reach the loss's gradients."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = torch.nn.Parameter(logits.clone())

    def forward(self, x, **_):  # a real model's keyword inputs (positions, float_logits) change nothing here
        assert x.shape == self.logits.shape[:2]
        return self.logits


class CountingModel(torch.nn.Module):
    """A causal oracle for windows that count up by one: after token t it predicts t + 1 when reading
    left-to-right and t - 1 when reading right-to-left (it knows the direction from the row's marker, token 0);
    after the marker itself it knows nothing (uniform). It looks at one input token only, so it is causal."""

    def __init__(self, vocab: int, l2r: int, r2l: int, confidence: float = 60.0):
        super().__init__()
        self.vocab, self.l2r, self.r2l, self.confidence = vocab, l2r, r2l, confidence

    def forward(self, x, **_):  # a real model's keyword inputs (positions, float_logits) change nothing here
        step = torch.where(x[:, :1] == self.l2r, 1, -1)           # [B, 1] direction of each row
        logits = torch.zeros(*x.shape, self.vocab)
        is_marker = (x == self.l2r) | (x == self.r2l)
        target = (x + step).clamp(0, self.vocab - 1)
        logits.scatter_(2, target.unsqueeze(-1), self.confidence)
        logits[is_marker] = 0.0
        return logits


# ----------------------------------------------------------------------------------------------------------------
# l2r
# ----------------------------------------------------------------------------------------------------------------
def test_l2r_window_starts_with_the_marker_and_predicts_every_token(tokenizer):
    batch = LeftToRight(tokenizer).make_batch(np.array([[11, 12, 13, 14]]))
    L = tokenizer.l2r_id
    assert batch.x.tolist() == [[L, 11, 12, 13]]
    assert batch.y.tolist() == [[11, 12, 13, 14]]
    assert batch.n_tokens == 4


# ----------------------------------------------------------------------------------------------------------------
# fim: the transform
# ----------------------------------------------------------------------------------------------------------------
E = 9  # a stand-in end-of-text id for the segment tests


@pytest.mark.parametrize("window, segments", [
    ([1, 2, E, 3, E, E], [[1, 2], [3], [], []]),
    ([1, 2], [[1, 2]]),
    ([E, 1], [[], [1]]),
    ([E], [[], []]),
])
def test_split_segments_cuts_at_end_of_text_and_keeps_empty_pieces(window, segments):
    got = split_segments(np.array(window), E)
    assert [s.tolist() for s in got] == segments
    rejoined = [t for k, s in enumerate(got) for t in ([E] if k else []) + s.tolist()]
    assert rejoined == window


def test_fim_split_points_are_uniform_character_positions_in_order():
    rng = np.random.default_rng(0)
    seen_lo, seen_hi = set(), set()
    for _ in range(400):
        prefix, middle, suffix = fim_split_text("abcd", rng)
        assert prefix + middle + suffix == "abcd"
        seen_lo.add(len(prefix))
        seen_hi.add(len(prefix) + len(middle))
    assert seen_lo == seen_hi == {0, 1, 2, 3, 4}  # both ends included: empty prefix/middle/suffix all occur


def test_fim_formats_are_psm_and_spm_variant_2(tokenizer):
    fim = FillInTheMiddle(tokenizer)
    P, M, S = tokenizer.fim_prefix_id, tokenizer.fim_middle_id, tokenizer.fim_suffix_id
    enc = tokenizer.encode
    psm = [P] + enc("def f") + [S] + enc(": pass") + [M] + enc("(x)")
    spm = [P, S] + enc(": pass") + [M] + enc("def f") + enc("(x)")
    assert fim.fim_format("def f", "(x)", ": pass", spm=False) == psm
    assert fim.fim_format("def f", "(x)", ": pass", spm=True) == spm


def parse_fim_document(tokens: list[int], tokenizer) -> tuple[str, bytes]:
    """Inverse of the transform for one segment: ('psm'|'spm'|'plain', prefix + middle + suffix bytes)."""
    P, M, S = tokenizer.fim_prefix_id, tokenizer.fim_middle_id, tokenizer.fim_suffix_id
    text = tokenizer.decode_bytes
    if not tokens or tokens[0] != P:
        return "plain", text(tokens)
    if tokens[1] == S:  # SPM: <PRE> <SUF> suffix <MID> prefix middle
        m = tokens.index(M)
        return "spm", text(tokens[m + 1:]) + text(tokens[2:m])
    s, m = tokens.index(S), tokens.index(M)
    return "psm", text(tokens[1:s]) + text(tokens[m + 1:]) + text(tokens[s + 1:m])


def test_fim_at_rate_one_transforms_every_segment_and_loses_no_byte(tokenizer):
    """Round trip over many windows of real code, including segments cut by the window edges and a multi-byte
    character cut by the window start (decoded with surrogateescape, so the bytes survive exactly)."""
    text_a = "def naïve(x):\n    return x + 1  # café ☕\n"
    text_b = "class Point:\n    x: int = 0\n    y: int = 0\n"
    doc = tokenizer.encode(text_a) + [tokenizer.eot_id] + tokenizer.encode(text_b) + [tokenizer.eot_id]
    stream = np.array(doc * 3)
    fim = FillInTheMiddle(tokenizer, fim_rate=1.0)
    rng = np.random.default_rng(1)
    formats = []
    for start in range(0, len(stream) - 24):
        window = stream[start:start + 24]
        out = fim.transform_window(window, rng)
        original = split_segments(window, tokenizer.eot_id)
        transformed = split_segments(np.array(out), tokenizer.eot_id)
        assert len(transformed) == len(original)  # end-of-text separators are kept, one for one
        for before, after in zip(original, transformed):
            kind, data = parse_fim_document(after.tolist(), tokenizer)
            assert data == tokenizer.decode_bytes(before.tolist())
            if len(before):
                assert kind in ("psm", "spm")
                formats.append(kind)
            else:
                assert after.tolist() == []  # nothing to split: an empty segment stays empty
    assert 0.35 < formats.count("spm") / len(formats) < 0.65


def test_fim_at_rate_zero_is_plain_l2r(tokenizer, small_shards):
    windows = np.fromfile(small_shards / "train.bin", dtype=np.uint16)[:4 * 64].reshape(4, 64)
    fim = FillInTheMiddle(tokenizer, fim_rate=0.0).make_batch(windows, np.random.default_rng(0))
    l2r = LeftToRight(tokenizer).make_batch(windows)
    assert torch.equal(fim.x, l2r.x) and torch.equal(fim.y, l2r.y)


def test_fim_rate_is_the_fraction_of_documents_transformed(tokenizer):
    docs = [tokenizer.encode(f"x{i} = {i}\n") + [tokenizer.eot_id] for i in range(2000)]
    window = np.array([t for d in docs for t in d])
    out = FillInTheMiddle(tokenizer, fim_rate=0.5).transform_window(window, np.random.default_rng(3))
    n_fim = out.count(tokenizer.fim_prefix_id)
    assert out.count(tokenizer.fim_middle_id) == out.count(tokenizer.fim_suffix_id) == n_fim
    assert 900 < n_fim < 1100  # binomial(2000, 0.5): +-4.5 sigma


class _FixedTransform(FillInTheMiddle):
    def __init__(self, tokenizer, sequence):
        super().__init__(tokenizer)
        self.sequence = sequence

    def transform_window(self, window, rng):
        return list(self.sequence)


def test_fim_batch_is_trimmed_or_padded_to_the_window_after_the_marker(tokenizer):
    L, pad = tokenizer.l2r_id, tokenizer.pad_id
    window = np.zeros((1, 4), dtype=np.int64)
    long = _FixedTransform(tokenizer, [1, 2, 3, 4, 5, 6]).make_batch(window, np.random.default_rng(0))
    assert long.x.tolist() == [[L, 1, 2, 3]] and long.y.tolist() == [[1, 2, 3, 4]]
    short = _FixedTransform(tokenizer, [1, 2]).make_batch(window, np.random.default_rng(0))
    assert short.x.tolist() == [[L, 1, pad, pad]] and short.y.tolist() == [[1, 2, IGNORE, IGNORE]]
    assert short.n_tokens == 2


def test_fim_batch_on_real_code_keeps_the_marker_and_the_shift(tokenizer, small_shards):
    windows = np.fromfile(small_shards / "train.bin", dtype=np.uint16)[:8 * 64].reshape(8, 64)
    batch = FillInTheMiddle(tokenizer, fim_rate=1.0).make_batch(windows, np.random.default_rng(0))
    assert batch.x.shape == batch.y.shape == (8, 64)
    assert (batch.x[:, 0] == tokenizer.l2r_id).all()
    assert torch.equal(batch.x[:, 1:], batch.y[:, :-1])  # no padding here: the sequences only get longer
    assert (batch.y == tokenizer.fim_prefix_id).any(dim=1).all()


def test_fim_rejects_a_rate_outside_zero_one(tokenizer):
    with pytest.raises(ConfigError, match="fim-rate"):
        FillInTheMiddle(tokenizer, fim_rate=1.5)


def test_line_split_cuts_at_two_distinct_line_starts():
    from codelm.objectives import fim_split_lines

    text = "a = 1\nb = 2\nc = 3\n"  # line starts 0, 6, 12 and the end, 18
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(300):
        prefix, middle, suffix = fim_split_lines(text, rng)
        assert prefix + middle + suffix == text and middle  # one or more whole lines
        seen.add((len(prefix), len(prefix) + len(middle)))
    assert seen == {(lo, hi) for lo in (0, 6, 12, 18) for hi in (0, 6, 12, 18) if lo < hi}
    assert fim_split_lines("no newline", rng) == ("", "no newline", "")  # a partial line is one line


def test_line_split_fim_keeps_every_byte_and_the_documents_own_tokens(tokenizer):
    """Whole-line pieces of code without blank lines tokenize as the whole document does: what the model sees at a
    seam is what it saw reading the document."""
    text_a = "def clamp(v, lo, hi):\n    if v < lo:\n        return lo\n    return min(v, hi)\n"
    text_b = "class Point:\n    x: int = 0\n    y: int = 0\n"
    doc = tokenizer.encode(text_a) + [tokenizer.eot_id] + tokenizer.encode(text_b) + [tokenizer.eot_id]
    fim = FillInTheMiddle(tokenizer, fim_rate=1.0, fim_split="line")
    rng = np.random.default_rng(0)
    for _ in range(40):
        out = fim.transform_window(np.array(doc), rng)
        for before, after in zip(split_segments(np.array(doc), tokenizer.eot_id)[:2],  # the third is empty
                                 split_segments(np.array(out), tokenizer.eot_id)):
            kind, data = parse_fim_document(after.tolist(), tokenizer)
            assert kind in ("psm", "spm") and data == tokenizer.decode_bytes(before.tolist())
            tokens = after.tolist()
            pieces = [t for t in tokens if t not in (tokenizer.fim_prefix_id, tokenizer.fim_suffix_id,
                                                      tokenizer.fim_middle_id)]
            assert sorted(pieces) == sorted(before.tolist())  # same tokens, only moved
    with pytest.raises(ConfigError, match="fim-split"):
        FillInTheMiddle(tokenizer, fim_split="word")


# ----------------------------------------------------------------------------------------------------------------
# mim: inputs, alignment, the agreement term
# ----------------------------------------------------------------------------------------------------------------
def test_mim_batch_reads_the_window_both_ways_in_one_batch(tokenizer):
    L, R = tokenizer.l2r_id, tokenizer.r2l_id
    batch = MeetInTheMiddle(tokenizer).make_batch(np.array([[1, 2, 3, 4], [5, 6, 7, 8]]))
    assert batch.x.tolist() == [[L, 1, 2, 3], [L, 5, 6, 7], [R, 4, 3, 2], [R, 8, 7, 6]]
    assert batch.y.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8], [4, 3, 2, 1], [8, 7, 6, 5]]
    assert batch.extra["n_forward"] == 2


@pytest.mark.parametrize("T", [2, 3, 4, 5, 8])
def test_mim_aligns_both_directions_on_the_same_token(tokenizer, T):
    """Counting windows and a causal oracle: each direction is certain everywhere except at its first position
    (right after its marker). Aligned correctly, the two distributions over w_i agree at every position but the
    two ends, so TV = 2 (1 - 1/V) / T exactly; any off-by-one would make them disagree almost everywhere."""
    V = 64
    mim = MeetInTheMiddle(tokenizer)
    mim.l2r, mim.r2l = 62, 63  # markers inside the toy vocabulary
    model = CountingModel(V, l2r=62, r2l=63)
    windows = np.array([np.arange(s, s + T) for s in (3, 10, 40)])
    batch = mim.make_batch(windows)
    fwd, bwd_aligned, y_fwd, y_bwd = mim.directions(model, batch)
    assert torch.equal(fwd.argmax(-1)[:, 1:], torch.as_tensor(windows)[:, 1:])     # fwd index i predicts w_i
    assert torch.equal(bwd_aligned.argmax(-1)[:, :-1], torch.as_tensor(windows)[:, :-1])  # bwd index T-1-i too
    tv = total_variation(fwd, bwd_aligned)
    assert math.isclose(float(tv), 2 * (1 - 1 / V) / T, rel_tol=1e-6)
    loss, metrics = mim.loss(model, batch)
    # each direction pays log V once (its first prediction) and ~nothing elsewhere
    assert math.isclose(float(metrics["loss_mim_fwd"]), math.log(V) / T, rel_tol=1e-5)
    assert math.isclose(float(metrics["loss_mim_bwd"]), math.log(V) / T, rel_tol=1e-5)
    assert math.isclose(float(loss), 2 * math.log(V) / T + 0.1 * 2 * (1 - 1 / V) / T, rel_tol=1e-5)


def test_total_variation_matches_a_direct_computation():
    torch.manual_seed(0)
    a, b = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    pa, pb = a.softmax(-1), b.softmax(-1)
    direct = [0.5 * sum(abs(float(pa[n, i, z]) - float(pb[n, i, z])) for z in range(7))
              for n in range(2) for i in range(5)]
    assert math.isclose(float(total_variation(a, b)), sum(direct) / len(direct), rel_tol=1e-5)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[0, 1] = mask[1, 4] = True
    assert math.isclose(float(total_variation(a, b, mask)), (direct[1] + direct[9]) / 2, rel_tol=1e-5)
    assert float(total_variation(a, a)) == 0.0


@pytest.mark.parametrize("stop_grad", [False, True])
def test_fused_mim_loss_equals_the_direct_formula_in_float64(monkeypatch, stop_grad):
    """The fused loss (closed-form TV gradient, chunks of rows) is the same function as autograd through
    NLL_fwd + NLL_bwd + beta * TV written directly: value and gradient, with ignored targets, several chunks and a
    short last one."""
    torch.manual_seed(3)
    B, T, V, beta = 3, 5, 9, 0.3
    logits = torch.randn(2 * B, T, V, dtype=torch.float64)
    logits[0, 2] = logits[B, T - 1 - 2]  # one aligned pair with identical distributions: TV's kink at 0
    y = torch.randint(0, V, (2 * B, T))
    y[0, 1] = y[B + 1, 0] = y[2 * B - 1, 3] = IGNORE
    direct_in = logits.clone().requires_grad_(True)
    fwd, bwd = direct_in[:B], direct_in[B:].flip(1)
    y_f, y_b = y[:B], y[B:].flip(1)
    other = bwd.detach() if stop_grad else bwd
    direct = (next_token_loss(fwd, y_f) + next_token_loss(bwd, y_b)
              + beta * total_variation(fwd, other, y_f != IGNORE))
    direct.backward()
    monkeypatch.setattr("codelm.objectives.MIM_CHUNK_ELEMENTS", 4 * V)  # 4 rows a chunk: 4 chunks, the last short
    fused_in = logits.clone().requires_grad_(True)
    fused, metrics = mim_loss(fused_in, y, B, beta, stop_grad)
    (2.5 * fused).backward()
    assert torch.allclose(fused, direct, rtol=1e-12, atol=1e-12)
    assert torch.allclose(fused_in.grad, 2.5 * direct_in.grad, rtol=1e-10, atol=1e-12)
    tv = total_variation(fwd.detach(), bwd.detach(), y_f != IGNORE)
    assert math.isclose(float(metrics[2]), float(tv), rel_tol=1e-12)


def test_mim_loss_is_both_nlls_plus_beta_tv_against_explicit_indices(tokenizer):
    """The TV term pairs forward position i with backward position T-1-i, written out index by index."""
    torch.manual_seed(1)
    B, T, V = 2, 4, 11
    windows = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    logits = torch.randn(2 * B, T, V)
    mim = MeetInTheMiddle(tokenizer, mim_beta=0.3)
    loss, metrics = mim.loss(FixedLogits(logits), mim.make_batch(windows))
    p = logits.softmax(-1)
    nll_f = -sum(math.log(p[b, i, windows[b, i]]) for b in range(B) for i in range(T)) / (B * T)
    nll_b = -sum(math.log(p[B + b, j, windows[b, T - 1 - j]]) for b in range(B) for j in range(T)) / (B * T)
    tv = sum(0.5 * float((p[b, i] - p[B + b, T - 1 - i]).abs().sum()) for b in range(B) for i in range(T)) / (B * T)
    assert math.isclose(float(metrics["loss_mim_fwd"]), nll_f, rel_tol=1e-5)
    assert math.isclose(float(metrics["loss_mim_bwd"]), nll_b, rel_tol=1e-5)
    assert math.isclose(float(metrics["mim_tv"]), tv, rel_tol=1e-5)
    assert math.isclose(float(loss.detach()), nll_f + nll_b + 0.3 * tv, rel_tol=1e-5)


def _grads(tokenizer, **options):
    torch.manual_seed(2)
    model = FixedLogits(torch.randn(4, 4, 11))
    mim = MeetInTheMiddle(tokenizer, **options)
    loss, _ = mim.loss(model, mim.make_batch(np.array([[1, 2, 3, 4], [5, 6, 7, 8]])))
    loss.backward()
    return model.logits.grad


def test_mim_stop_grad_keeps_the_agreement_gradient_out_of_the_backward_direction(tokenizer):
    nll_only = _grads(tokenizer, mim_beta=0.0)
    flowing = _grads(tokenizer, mim_beta=0.5)
    stopped = _grads(tokenizer, mim_beta=0.5, mim_stop_grad=True)
    assert torch.allclose(stopped[2:], nll_only[2:])        # backward rows: NLL gradient only
    assert torch.allclose(stopped[:2], flowing[:2])         # forward rows: pulled towards the backward ones
    assert not torch.allclose(flowing[2:], nll_only[2:])    # default: the agreement term reaches both


def test_mim_beta_zero_is_the_sum_of_the_two_nlls(tokenizer):
    mim = MeetInTheMiddle(tokenizer, mim_beta=0.0)
    loss, metrics = mim.loss(FixedLogits(torch.randn(2, 4, 11)), mim.make_batch(np.array([[1, 2, 3, 4]])))
    assert "mim_tv" not in metrics
    assert math.isclose(float(loss.detach()), float(metrics["loss_mim_fwd"] + metrics["loss_mim_bwd"]), rel_tol=1e-6)


def test_mim_forward_stream_is_exactly_the_l2r_loss(tokenizer, small_shards):
    """One forward over both directions changes nothing for the forward rows: the forward model is plain l2r."""
    from codelm.model import Transformer, preset_config
    torch.manual_seed(0)
    model = Transformer(preset_config("tiny", n_layer=2, n_head=2, d_model=64, context_length=64)).eval()
    windows = np.fromfile(small_shards / "val.bin", dtype=np.uint16)[:3 * 32].reshape(3, 32)
    mim = MeetInTheMiddle(tokenizer)
    with torch.no_grad():
        streams = mim.val_metrics(model, mim.make_batch(windows))
        l2r = LeftToRight(tokenizer)
        plain = l2r.val_metrics(model, l2r.make_batch(windows))["l2r"]
        reversed_plain = LeftToRight(tokenizer).val_metrics(
            model, Batch(*_r2l_batch(tokenizer, windows), "l2r"))["l2r"]
    assert set(streams) == {"mim_fwd", "mim_bwd"}
    assert streams["mim_fwd"][1] == plain[1] == 96
    assert math.isclose(streams["mim_fwd"][0], plain[0], rel_tol=1e-5)
    assert math.isclose(streams["mim_bwd"][0], reversed_plain[0], rel_tol=1e-5)


def _r2l_batch(tokenizer, windows):
    r = torch.from_numpy(windows[:, ::-1].astype(np.int64).copy())
    return torch.cat([torch.full((r.shape[0], 1), tokenizer.r2l_id), r[:, :-1]], dim=1), r


def test_mim_rejects_a_negative_beta(tokenizer):
    with pytest.raises(ConfigError, match="mim-beta"):
        MeetInTheMiddle(tokenizer, mim_beta=-0.1)


# ----------------------------------------------------------------------------------------------------------------
# sft: completion-only fine-tuning
# ----------------------------------------------------------------------------------------------------------------
def write_jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_sft_loss_covers_the_completion_and_its_end_of_text_only(tokenizer, tmp_path):
    data = write_jsonl(tmp_path / "ex.jsonl", [{"prompt": "a", "completion": "b"}])
    sft = CompletionOnly(tokenizer, sft_data=str(data))
    L, E = tokenizer.l2r_id, tokenizer.eot_id
    assert sft.example_tokens([1, 2], [3], T=8) == ([L, 1, 2, 3], [IGNORE, IGNORE, 3, E])
    # too long for the window: the beginning of the prompt goes first
    assert sft.example_tokens([1, 2], [3], T=3) == ([L, 2, 3], [IGNORE, 3, E])


def test_sft_batches_pad_to_the_longest_example_and_hold_out_every_twentieth(tokenizer, tmp_path):
    records = [{"prompt": f"def f{i}():\n", "completion": "    return " + "1 + " * (i % 5) + "0\n"} for i in range(40)]
    sft = CompletionOnly(tokenizer, sft_data=str(write_jsonl(tmp_path / "ex.jsonl", records)))
    assert len(sft.splits["train"]) == 38 and len(sft.splits["val"]) == 2  # examples 19 and 39
    val_completions = {tuple(c) for _, c in sft.splits["val"]}
    assert val_completions == {tuple(tokenizer.encode(records[i]["completion"])) for i in (19, 39)}
    windows = np.zeros((6, 64), dtype=np.int64)
    batch = sft.make_batch(windows, np.random.default_rng(0))
    assert batch.x.shape[0] == 6 and batch.x.shape[1] <= 64
    for x, y in zip(batch.x.tolist(), batch.y.tolist()):
        real = [i for i, t in enumerate(y) if t != IGNORE]
        assert x[0] == tokenizer.l2r_id
        assert y[real[-1]] == tokenizer.eot_id            # the completion ends with end-of-text
        completion = tokenizer.decode(y[real[0]:real[-1]])
        assert completion.startswith("    return ")
        assert tokenizer.decode(x[1:real[0] + 1]).startswith("def f")  # the prompt is context, not a target
    val = sft.make_batch(windows, np.random.default_rng(0), split="val")
    assert {tuple(t for t in row if t not in (IGNORE, tokenizer.eot_id)) for row in val.y.tolist()} <= val_completions


@pytest.mark.parametrize("line, problem", [
    ('{"prompt": "a", "completion": ', "2: not valid JSON"),
    ('["a", "b"]', "2: expected a JSON object"),
    ('{"prompt": "a"}', "2: field 'completion' is missing"),
    ('{"prompt": 3, "completion": "b"}', "2: field 'prompt' is not a string (int)"),
])
def test_sft_malformed_lines_name_file_and_line(tmp_path, line, problem):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "completion": "b"}, line])
    with pytest.raises(DataError) as err:
        read_completion_examples(path)
    assert f"{path}:{problem}" in str(err.value)
    assert "\n" not in str(err.value)


def test_sft_data_errors_are_user_errors(tokenizer, tmp_path):
    with pytest.raises(ConfigError, match="--sft-data"):
        CompletionOnly(tokenizer)
    with pytest.raises(DataError, match="no such file"):
        read_completion_examples(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="no examples"):
        read_completion_examples(write_jsonl(tmp_path / "blank.jsonl", ["", "  "]))
    (tmp_path / "latin1.jsonl").write_bytes(b'{"prompt": "a", "completion": "b"}\n{"prompt": "\xe9"}\n')
    with pytest.raises(DataError, match="latin1.jsonl:2: not valid UTF-8"):
        read_completion_examples(tmp_path / "latin1.jsonl")


# ----------------------------------------------------------------------------------------------------------------
# mixtures
# ----------------------------------------------------------------------------------------------------------------
def test_mixture_weights_are_over_windows_and_normalised():
    assert parse_mixture("mim") == {"mim": 1.0}
    assert parse_mixture("mim:0.5,fim:0.5") == {"mim": 0.5, "fim": 0.5}
    assert parse_mixture("mim:3, fim:1") == {"mim": 0.75, "fim": 0.25}
    assert parse_mixture("l2r:1,fim:0") == {"l2r": 1.0}


@pytest.mark.parametrize("spec, message", [
    ("bert", "unknown objective 'bert'"), ("mim:x", "bad weight"), ("mim:-1", "must be finite and >= 0"),
    ("mim:nan", "must be finite"), ("fim:0", "no objective with a positive weight"), ("", "no objective"),
])
def test_bad_mixtures_are_config_errors(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_mixture(spec)


def test_build_objectives_hands_each_objective_its_options(tokenizer):
    objectives = build_objectives("mim:0.5,fim:0.5", tokenizer, fim_rate=0.25, mim_beta=0.2, mim_stop_grad=True)
    assert objectives["fim"].rate == 0.25
    assert (objectives["mim"].beta, objectives["mim"].stop_grad) == (0.2, True)


# ----------------------------------------------------------------------------------------------------------------
# through the trainer
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_mim_fim_mixture_trains_reports_each_stream_and_records_both_capabilities(small_shards, tmp_path):
    from codelm.loader import load_checkpoint
    from codelm.generate import SamplingParams, generate
    from codelm.train import Trainer

    cfg = micro_train_config(small_shards, tmp_path / "run", objective="mim:0.5,fim:0.5", steps=6, grad_accum=2)
    summary = Trainer(cfg).fit()
    for stream in ("mim_fwd", "mim_bwd", "fim"):
        assert math.isfinite(summary[f"val_{stream}"]) and summary[f"val_{stream}_bpb"] > 0
    ckpt = load_checkpoint(summary["checkpoint"])
    caps = ckpt.capabilities
    assert caps["can_fim"] and caps["can_mim"] and caps["can_l2r"]
    assert caps["objectives"] == {"mim": 0.5, "fim": 0.5}
    # the forward direction samples like any left-to-right model
    text = generate(ckpt.model, ckpt.tokenizer, "def add(a, b):", SamplingParams(max_new_tokens=8, seed=0),
                    capabilities=caps)
    assert isinstance(text, str)


@pytest.mark.parametrize("objective, read", [("l2r", 1), ("mim", 2), ("mim:0.5,l2r:0.5", None)])
def test_mfu_counts_every_direction_the_model_reads(small_shards, tmp_path, objective, read):
    """A MIM window is read twice (both directions); MFU counts what the model processed, not window tokens."""
    from codelm.train import Trainer
    trainer = Trainer(micro_train_config(small_shards, tmp_path / "run", objective=objective, grad_accum=2))
    for _ in range(3):
        trainer.train_step()
    if read is None:  # a mixture: between the two
        assert trainer.tokens_seen < trainer.model_tokens < 2 * trainer.tokens_seen
    else:
        assert trainer.model_tokens == read * trainer.tokens_seen


@pytest.mark.slow
def test_sft_fine_tuning_runs_through_the_trainer(small_shards, tmp_path):
    from codelm.train import Trainer

    records = [{"prompt": f"def double_{i}(x):\n", "completion": "    return 2 * x\n"} for i in range(25)]
    data = write_jsonl(tmp_path / "exercises.jsonl", records)
    cfg = micro_train_config(small_shards, tmp_path / "run", objective="sft", sft_data=str(data), steps=8, lr=1e-2)
    trainer = Trainer(cfg)
    before = trainer.validate()["val_sft"]
    after = trainer.fit()["val_sft"]
    assert after < before  # the one held-out completion gets likelier


def test_fused_next_token_loss_equals_cross_entropy_in_value_and_gradient():
    from codelm.objectives import fused_next_token_loss

    torch.manual_seed(0)
    logits = torch.randn(3, 7, 40, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 40, (3, 7))
    y[0, :3] = IGNORE
    ours = fused_next_token_loss(logits, y)
    (g_ours,) = torch.autograd.grad(2.5 * ours, logits)
    ref = next_token_loss(logits, y)
    (g_ref,) = torch.autograd.grad(2.5 * ref, logits)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(g_ours, g_ref)
    # bf16 logits (the trainer's under autocast): the gradient is the float32 one rounded to bf16, no float32 copy
    low = logits.detach().bfloat16().requires_grad_()
    (g_low,) = torch.autograd.grad(fused_next_token_loss(low, y), low)
    assert g_low.dtype == torch.bfloat16
    up = low.detach().double().requires_grad_()
    (g_up,) = torch.autograd.grad(next_token_loss(up, y), up)
    torch.testing.assert_close(g_low.double(), g_up, atol=2e-3, rtol=1e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_loss_kernels_equal_the_eager_chunk_loops(monkeypatch, dtype):
    """The trainer's compiled losses (compile_losses: each chunk through torch.compile) give the eager loops' values
    and gradients — l2r and MIM with and without the agreement term, stop_grad, a document layout's pairing, ignored
    targets, a short last chunk — up to float32 rounding (bf16 gradients: one bf16 step)."""
    from codelm.objectives import fused_next_token_loss

    torch.manual_seed(5)
    B, T, V = 3, 7, 50
    monkeypatch.setattr("codelm.objectives.MIM_CHUNK_ELEMENTS", 4 * V)  # 4 rows a chunk, the last one short
    logits = (3 * torch.randn(2 * B, T, V)).to(dtype)
    y = torch.randint(0, V, (2 * B, T))
    y[0, :2] = y[B + 1, 3] = y[2 * B - 1, 0] = IGNORE
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-2, atol=2e-3)

    def run(loss_fn, compiled):
        x = logits.clone().requires_grad_(True)
        out = loss_fn(x, compiled)
        value = out[0] if isinstance(out, tuple) else out
        (1.5 * value).backward()
        return out, x.grad

    (value_e, grad_e), (value_c, grad_c) = (run(lambda x, c: fused_next_token_loss(x[:B], y[:B], c), c)
                                            for c in (False, True))
    torch.testing.assert_close(value_c, value_e, rtol=1e-6, atol=1e-6)
    assert grad_c.dtype == dtype
    torch.testing.assert_close(grad_c, grad_e, **tol)
    pairs = torch.randperm(B * T) + B * T  # any pairing of forward positions with backward ones (a document layout)
    for beta, stop_grad, pair in ((0.3, False, None), (0.3, True, None), (0.0, False, None), (0.2, False, pairs)):
        ((loss_e, metrics_e), grad_e), ((loss_c, metrics_c), grad_c) = (
            run(lambda x, c: mim_loss(x, y, B, beta, stop_grad, pair, c), c) for c in (False, True))
        torch.testing.assert_close(loss_c, loss_e, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(metrics_c, metrics_e, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(grad_c, grad_e, **tol)

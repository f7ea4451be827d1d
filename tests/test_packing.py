"""Document-aware packing (`--attention-mask document`): each document of a packed window trains as if alone."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from codelm.model import ModelConfig, Transformer
from codelm.objectives import (IGNORE, FillInTheMiddle, LeftToRight, MeetInTheMiddle, mim_loss, next_token_loss,
                               total_variation)
from codelm.packing import block_causal_mask, document_layout, fitting_prefix
from support import assert_resume_is_bit_exact, make_shards

WINDOW = 40


@pytest.fixture(scope="module")
def packed_windows(tokenizer) -> np.ndarray:
    """Two windows of WINDOW tokens packing several short documents, cut at both ends, separated by end-of-text."""
    docs = ["def add(a, b):\n    return a + b\n", "import os\nprint(os.getcwd())\n", "x = [i * i for i in range(9)]\n",
            "class A:\n    pass\n", "while True:\n    break\n"]
    stream = []
    for d in docs * 3:
        stream += tokenizer.encode(d) + [tokenizer.eot_id]
    stream = np.array(stream)
    return np.stack([stream[3:3 + WINDOW], stream[17:17 + WINDOW]])


@pytest.fixture(scope="module")
def model(tokenizer) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tokenizer.n_vocab + 64 - tokenizer.n_vocab % 64, context_length=64, n_layer=2,
                      n_head=2, d_model=32)
    return Transformer(cfg).eval()


def token_losses(model, batch) -> torch.Tensor:
    with torch.no_grad():
        logits = model(batch.x, **batch.model_inputs())
    return next_token_loss(logits, batch.y, reduction="none").view(batch.y.shape)


def alone(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-token losses of one block run as its own sequence (positions 0.., plain causal attention)."""
    with torch.no_grad():
        logits = model(x.unsqueeze(0))
    return next_token_loss(logits, y.unsqueeze(0), reduction="none").view(-1)


def assert_each_block_as_if_alone(model, batch, marker_of_row):
    blocks, positions = batch.extra["blocks"], batch.extra["positions"]
    packed = token_losses(model, batch)
    n_blocks = 0
    for b in range(batch.x.shape[0]):
        for k in blocks[b].unique():
            where = (blocks[b] == k).nonzero().view(-1)
            x, y = batch.x[b, where], batch.y[b, where]
            assert positions[b, where].tolist() == list(range(len(where)))  # positions restart per document
            if (y != IGNORE).any():
                assert x[0] == marker_of_row(b)  # each document opens with its own direction marker
                n_blocks += 1
            torch.testing.assert_close(packed[b, where], alone(model, x, y), atol=1e-5, rtol=0)
    assert n_blocks > 2 * batch.x.shape[0]  # several documents per window


def test_layout_predicts_every_token_once_and_restarts_positions():
    w = np.array([5, 6, 0, 7, 8, 9, 0, 4])  # end-of-text = 0
    source, target, position, block = document_layout(w, eot=0)
    assert len(source) == len(w) + 2                                      # one more position per end-of-text
    assert sorted(target[target >= 0].tolist()) == list(range(len(w)))   # every raw token predicted once
    assert position.tolist() == [0, 1, 2, 0, 1, 2, 3, 4, 0, 1]
    assert block.tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 2, 2]
    # inputs: marker (-1), then the end-of-text that opened the block, then the document
    assert [w[s] if s >= 0 else "m" for s in source] == ["m", 5, 6, "m", 0, 7, 8, 9, "m", 0]
    assert fitting_prefix(w, 0, 8) == 6 and fitting_prefix(w, 0, 10) == 8


def test_block_causal_mask():
    mask = block_causal_mask(torch.tensor([[0, 0, 1, 1, 1]]))[0, 0].int().tolist()
    assert mask == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 1]]


def test_l2r_documents_train_as_if_each_were_alone(tokenizer, model, packed_windows):
    batch = LeftToRight(tokenizer, attention_mask="document").make_batch(packed_windows)
    assert batch.x.shape == packed_windows.shape
    assert_each_block_as_if_alone(model, batch, lambda b: tokenizer.l2r_id)
    # the layout reads the window's own tokens: targets are the window's, in order, end-of-text included
    kept = batch.y[0][batch.y[0] != IGNORE].tolist()
    assert kept == packed_windows[0, :len(kept)].tolist()
    # without the mask the same model gives other losses (the documents do see each other)
    plain = LeftToRight(tokenizer).make_batch(packed_windows)
    with torch.no_grad():
        other = model(batch.x, positions=batch.extra["positions"])
    assert not torch.allclose(other, model(batch.x, **batch.model_inputs()), atol=1e-3)
    assert plain.extra == {}


def test_fim_documents_keep_their_sentinel_layout_and_train_alone(tokenizer, model, packed_windows):
    fim = FillInTheMiddle(tokenizer, fim_rate=1.0, fim_split="line", attention_mask="document")
    batch = fim.make_batch(packed_windows, np.random.default_rng(0))
    assert_each_block_as_if_alone(model, batch, lambda b: tokenizer.l2r_id)
    blocks = batch.extra["blocks"][0]
    for k in blocks.unique()[1:]:  # whole documents: [<l2r>, <eot>, <PRE>, ... <SUF> ... <MID> ...]
        x = batch.x[0, blocks == k].tolist()
        if len(x) > 2 and x[0] == tokenizer.l2r_id:
            assert x[1] == tokenizer.eot_id and x[2] == tokenizer.fim_prefix_id
            assert tokenizer.fim_suffix_id in x


def test_mim_both_directions_train_alone_and_pair_the_same_tokens(tokenizer, model, packed_windows):
    mim = MeetInTheMiddle(tokenizer, attention_mask="document")
    batch = mim.make_batch(packed_windows)
    B, T = packed_windows.shape
    assert batch.x.shape == (2 * B, T)
    assert_each_block_as_if_alone(model, batch, lambda b: tokenizer.l2r_id if b < B else tokenizer.r2l_id)
    # every forward prediction's partner predicts the same token, and the pairing is a permutation
    pairs = batch.extra["pairs"]
    assert sorted(pairs.tolist()) == list(range(B * T, 2 * B * T))
    y = batch.y.reshape(-1)
    fwd = y[:B * T]
    assert torch.equal(fwd[fwd != IGNORE], y[pairs][fwd != IGNORE])
    assert (fwd != IGNORE).sum() == (y[B * T:] != IGNORE).sum()
    # the fused loss with these pairs equals the direct formula (fp64)
    torch.manual_seed(1)
    logits = torch.randn(2 * B, T, 50, dtype=torch.float64)
    yy = torch.where(batch.y == IGNORE, IGNORE, batch.y % 50)
    loss, (nll_f, nll_b, tv) = mim_loss(logits, yy, B, beta=0.1, pairs=pairs)
    flat = logits.view(-1, 50)
    a, b = flat[:B * T], flat[pairs]
    valid = yy.view(-1)[:B * T] != IGNORE
    torch.testing.assert_close(tv, total_variation(a, b, valid))
    torch.testing.assert_close(nll_f, next_token_loss(logits[:B], yy[:B]))
    torch.testing.assert_close(nll_b, next_token_loss(logits[B:], yy[B:]))


def test_explicit_bf16_attention_takes_the_document_mask():
    from codelm.fast_paths import causal_attention_explicit

    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 2, 24, 8) for _ in range(3))
    mask = block_causal_mask(torch.tensor([[0] * 10 + [1] * 14, [0] * 24, [0] * 3 + [1] * 5 + [2] * 16]))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    ours = causal_attention_explicit(q.bfloat16(), k.bfloat16(), v.bfloat16(), None, mask)
    torch.testing.assert_close(ours.float(), ref, atol=3e-2, rtol=0)


@pytest.fixture(scope="module")
def short_docs(tmp_path_factory, tokenizer):
    texts = [f"def f{i}(x):\n    return x * {i} + {i % 7}\n" * (1 + i % 3) for i in range(300)]
    return make_shards(tmp_path_factory.mktemp("shards") / "short", texts, tokenizer)


def test_document_mask_run_resumes_bit_for_bit_and_records_the_mode(tmp_path, short_docs):
    cfg = dict(steps=6, objective="mim:0.5,fim:0.5,l2r:0.5", attention_mask="document", batch_size=3)
    assert_resume_is_bit_exact(short_docs, tmp_path, stop_at=3, **cfg)
    caps = json.loads(next((tmp_path / "full" / "checkpoints").iterdir()).joinpath("config.json").read_text())
    assert caps["capabilities"]["attention_mask"] == "document"

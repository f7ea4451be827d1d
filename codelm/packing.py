"""Document-aware packing (`--attention-mask document`): windows still pack several documents, but no token attends
across an end-of-text and positions restart at every document, so each document is read as if it were alone.

A raw window is split at its end-of-text tokens into blocks; each block starts with the direction marker (a
document can no longer see the window's), then the end-of-text that opened it, as a prompt for a whole document
does (`codelm.prompts.document_head`):

    window     a0 a1 E b0 b1 E c0                      (a: the tail of a document cut by the window start)
    blocks     [m a0 a1]        [m E b0 b1]        [m E c0]
    targets     a0 a1 E          -  b0 b1 E          -  c0        (-: ignored; the previous block predicted that E)
    positions   0  1  2          0  1  2  3          0  1

Every raw token is a target exactly once; each end-of-text after the first block is also read once more as input,
and each block costs a marker: a window with K end-of-text tokens lays out in T + K positions. l2r and FIM cut the
layout back to T (the tail is dropped, as FIM already does with its sentinels); MIM lays out the longest prefix of
the window that fits in T positions, in both directions, so that both read the same raw tokens and every forward
prediction has its backward partner (`mim_pairs`). The rest of a row is padding: its own block, no targets.

The mask is block-causal: a query sees the keys of its own block at or before it. It is built here, outside the
model, as a dense boolean tensor [B, 1, T, T] for SDPA (and the bf16 CPU attention of codelm/fast_paths.py).
FlexAttention's block masks would skip the masked tiles, but torch 2.13 has no FlexAttention backward on CPU, and
at the CPU presets' contexts (256-512) the dense mask costs about what plain causal attention does (measured:
benchmarks/bench_train.py --attention-mask document).
"""

from __future__ import annotations

import numpy as np
import torch

from codelm.terms import CAUSAL, DOCUMENT

ATTENTION_MASKS = (CAUSAL, DOCUMENT)


def document_layout(window: np.ndarray, eot: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The document layout of a sequence (module docstring), as indices into it.

    Returns, per laid-out position: `source` (the index of the token read as input, -1 for the marker), `target`
    (the index of the token predicted, -1 where nothing is), `position` (restarting at 0 in every block) and
    `block` (0, 1, ...). Length: len(window) + number of end-of-text tokens."""
    n = len(window)
    ends = np.flatnonzero(np.asarray(window) == eot)
    # block k spans tokens [start_k, stop_k]: its opening end-of-text (none for block 0), its text, its closing one
    starts = np.r_[0, ends]
    stops = np.r_[ends, n - 1]
    lengths = stops - starts + 1
    block = np.repeat(np.arange(len(lengths)), lengths)
    offset = np.arange(len(block)) - np.repeat(np.cumsum(lengths) - lengths, lengths)  # position within the block
    target = np.repeat(starts, lengths) + offset
    source = np.where(offset == 0, -1, target - 1)
    target = np.where((offset == 0) & (block > 0), -1, target)  # the opening end-of-text: read, not predicted
    return source, target, offset, block


def fitting_prefix(window: np.ndarray, eot: int, length: int) -> int:
    """The longest prefix of `window` whose document layout fits in `length` positions."""
    laid_out = np.arange(1, len(window) + 1) + np.cumsum(np.asarray(window) == eot)  # layout length of each prefix
    return int(np.searchsorted(laid_out, length, side="right"))


def pack_row(tokens: np.ndarray, eot: int, marker: int, pad: int, length: int, ignore: int):
    """One row of `length` positions in the document layout of `tokens` (cut to fit, padded after): int64 arrays
    (x, y, positions, blocks, target) where `target` is the index in `tokens` each y came from (-1: none)."""
    source, target, position, block = (a[:length] for a in document_layout(tokens, eot))
    tokens = np.asarray(tokens, dtype=np.int64)
    x = np.where(source < 0, marker, tokens[np.maximum(source, 0)])
    y = np.where(target < 0, ignore, tokens[np.maximum(target, 0)])
    n_pad = length - len(x)
    if n_pad:  # one block of its own, causal inside (a query row must see at least itself), no targets
        x = np.r_[x, np.full(n_pad, pad)]
        y = np.r_[y, np.full(n_pad, ignore)]
        target = np.r_[target, np.full(n_pad, -1)]
        position = np.r_[position, np.arange(n_pad)]
        block = np.r_[block, np.full(n_pad, block[-1] + 1 if len(block) else 0)]
    return x, y, position, block, target


def mim_pairs(fwd_target: np.ndarray, bwd_target: np.ndarray, n: int) -> np.ndarray:
    """For each position of a forward row, the position of the backward row predicting the same token (a
    permutation: positions without a target pair with each other in order). Both rows lay out the same n tokens,
    the backward one reversed, so its target index j is the forward token n - 1 - j."""
    T = len(fwd_target)
    where_bwd = np.full(n, -1)
    has = bwd_target >= 0
    where_bwd[n - 1 - bwd_target[has]] = np.flatnonzero(has)
    pairs = np.empty(T, dtype=np.int64)
    fwd_has = fwd_target >= 0
    pairs[fwd_has] = where_bwd[fwd_target[fwd_has]]
    pairs[~fwd_has] = np.flatnonzero(~has)
    return pairs


def block_causal_mask(blocks: torch.Tensor) -> torch.Tensor:
    """[B, T] block numbers -> [B, 1, T, T] bool, True where query t may see key s: same block and s <= t."""
    T = blocks.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=blocks.device).tril_()
    return ((blocks.unsqueeze(2) == blocks.unsqueeze(1)) & causal).unsqueeze(1)

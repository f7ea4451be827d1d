"""Training objectives: how raw token windows become model inputs, targets and a loss.

An objective sees windows of `context_length` raw tokens cut from the packed shards (documents separated by
end-of-text) and returns a `Batch`; its `loss` runs the model and returns the scalar to minimise plus named metrics;
its `val_metrics` returns summed nats and token counts per reported stream (the trainer turns them into nats/token and
bits/byte). Every forward window starts with `<|l2r|>` and every reversed one with `<|r2l|>`: the markers are the BOS
tokens of the two reading directions (ARCHITECTURE.md).

l2r  next-token prediction:  x = [<l2r>, w0 .. w_{T-2}],  y = [w0 .. w_{T-1}];  loss on all T tokens.

fim  context-level fill-in-the-middle (Bavarian et al. 2022, arXiv 2207.14255, sections 3-4; SPM in section 3.1 and
     its appendix): each document segment of the window is, with probability `fim_rate`, split at two uniform
     random *character* positions into prefix/middle/suffix and re-tokenized, half PSM, half SPM (variant 2):
         PSM  <PRE> prefix <SUF> suffix <MID> middle
         SPM  <PRE> <SUF> suffix <MID> prefix middle
     The end-of-text that separated the document from the next one follows the middle. Loss on every token; the
     result is trimmed (or padded with <|pad|>, no loss) back to T tokens after the <l2r> marker.

mim  meet-in-the-middle (Nguyen et al. 2023, arXiv 2303.07295, section 3): one network with shared weights reads each
     window left-to-right and right-to-left, both directions as one batch (one forward):
         forward   x = [<l2r>, w0 .. w_{T-2}]         y = [w0 .. w_{T-1}]
         backward  x = [<r2l>, w_{T-1} .. w1]         y = [w_{T-1} .. w0]
     The forward logit predicting w_i sits at index i, the backward one at index T-1-i, so flipping the backward
     logits along time aligns the two distributions over the same token. Loss = NLL_fwd + NLL_bwd + beta * TV, with
     TV_i = 1/2 sum_z |p_fwd(z | w<i) - p_bwd(z | w>i)| averaged over all positions (beta = 0.1, the paper's value).

sft  completion-only fine-tuning on exercise JSONL (`prompt`, `completion` per line): x = [<l2r>, prompt, completion],
     loss only on the completion and the end-of-text after it.

Document-aware packing (`--attention-mask document`, codelm/packing.py): l2r, fim and both mim directions lay
each window out as one block per document, every block opening with its own direction marker, attention
block-causal and positions restarting per block; the batch carries the positions and block numbers
(`Batch.model_inputs` turns them into the model's inputs) and, for mim, which backward prediction pairs with
which forward one. sft rows already hold one example each: the option changes nothing there.

Mixtures (`--objective mim:0.5,fim:0.5`) are over windows: the trainer draws one objective per micro-batch with the
mixture's weights (`train.choose_objective`). Mixing inside a micro-batch would lower gradient variance a little, but
each objective's batch has its own shape (MIM doubles the rows, SFT has its own lengths); drawing per micro-batch keeps
objectives independent and the expected gradient is the same. With `--grad-accum 1` one optimizer step sees one
objective; use a few micro-batches per step for a smoother mixture.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from codelm.errors import ConfigError, DataError
from codelm.packing import ATTENTION_MASKS, block_causal_mask, fitting_prefix, mim_pairs, pack_row
from codelm.prompts import fim_layout
from codelm.terms import CAUSAL, DOCUMENT

IGNORE = -100  # target id excluded from the loss (padding, prompts in completion-only fine-tuning)


@dataclass
class Batch:
    x: torch.Tensor                 # [B, T] inputs
    y: torch.Tensor                 # [B, T] targets (IGNORE where no loss)
    objective: str
    extra: dict = field(default_factory=dict)

    def to(self, device) -> "Batch":
        extra = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in self.extra.items()}
        return Batch(self.x.to(device), self.y.to(device), self.objective, extra)

    @property
    def n_tokens(self) -> int:
        return int((self.y != IGNORE).sum())

    def model_inputs(self) -> dict:
        """The model's keyword inputs besides x: a document-packed batch's positions and block-causal mask."""
        if "blocks" not in self.extra:
            return {}
        return {"positions": self.extra["positions"], "attn_mask": block_causal_mask(self.extra["blocks"])}

    def training_inputs(self) -> dict:
        """`model_inputs` plus logits in the head's own dtype: the training losses upcast them a chunk at a time."""
        return {**self.model_inputs(), "float_logits": False}


def check_attention_mask(mode: str) -> str:
    if mode not in ATTENTION_MASKS:
        raise ConfigError(f"--attention-mask must be one of {', '.join(ATTENTION_MASKS)}, got {mode!r}")
    return mode


def document_batch(rows: list[np.ndarray], tokenizer, marker: int, length: int, name: str) -> Batch:
    """Rows of tokens (raw or FIM-transformed windows) in the document layout, cut to `length` (codelm/packing.py)."""
    packed = [pack_row(r, tokenizer.eot_id, marker, tokenizer.pad_id, length, IGNORE) for r in rows]
    x, y, positions, blocks = (torch.from_numpy(np.stack([p[i] for p in packed]).astype(np.int64)) for i in range(4))
    return Batch(x, y, name, {"positions": positions, "blocks": blocks})


def next_token_loss(logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=IGNORE,
                           reduction=reduction)


def with_marker(marker: int, tokens: torch.Tensor) -> torch.Tensor:
    """[B, T] targets -> [B, T] inputs: the direction marker, then the targets shifted right by one."""
    return torch.cat([torch.full((tokens.shape[0], 1), marker, dtype=torch.long), tokens[:, :-1]], dim=1)


# ----------------------------------------------------------------------------------------------------------------
# l2r
# ----------------------------------------------------------------------------------------------------------------
class NextTokenObjective:
    """An objective whose loss is plain next-token cross-entropy on its batch (l2r, fim, sft); `name` keys its
    metrics."""
    name = ""
    compiled_loss = False  # the loss's chunk kernel through torch.compile (set by the trainer: compile_losses)

    def loss(self, model, batch: Batch) -> tuple[torch.Tensor, dict]:
        loss = fused_next_token_loss(model(batch.x, **batch.training_inputs()), batch.y, self.compiled_loss)
        return loss, {f"loss_{self.name}": loss.detach()}

    def val_metrics(self, model, batch: Batch) -> dict[str, tuple[float, int]]:
        """Summed nats and token counts per reported stream, for exact averaging over many batches."""
        nats = next_token_loss(model(batch.x, **batch.model_inputs()), batch.y, reduction="sum")
        return {self.name: (float(nats), batch.n_tokens)}


class LeftToRight(NextTokenObjective):
    name = "l2r"

    def __init__(self, tokenizer, attention_mask: str = CAUSAL, **_):
        self.tokenizer, self.marker = tokenizer, tokenizer.l2r_id
        self.attention_mask = check_attention_mask(attention_mask)

    def make_batch(self, windows: np.ndarray, rng: np.random.Generator | None = None, split: str = "train") -> Batch:
        if self.attention_mask == DOCUMENT:
            return document_batch(list(windows), self.tokenizer, self.marker, windows.shape[1], self.name)
        w = torch.from_numpy(windows.astype(np.int64))
        return Batch(with_marker(self.marker, w), w, self.name)


# ----------------------------------------------------------------------------------------------------------------
# fim
# ----------------------------------------------------------------------------------------------------------------
def split_segments(window: np.ndarray, eot: int) -> list[np.ndarray]:
    """The document segments of a packed window, without their end-of-text separators.

    len(result) == number of end-of-text tokens + 1; segments may be empty (a window that starts or ends on an
    end-of-text, or two in a row). Joining them with end-of-text gives the window back."""
    bounds = np.r_[-1, np.flatnonzero(window == eot), len(window)]
    return [window[a + 1:b] for a, b in zip(bounds[:-1], bounds[1:])]


def fim_split_text(text: str, rng: np.random.Generator) -> tuple[str, str, str]:
    """Two uniform random character positions (FIM paper section 3; bigcode Megatron's `randint(0, len + 1, 2)`)."""
    lo, hi = sorted(int(b) for b in rng.integers(0, len(text) + 1, size=2))
    return text[:lo], text[lo:hi], text[hi:]


def fim_split_lines(text: str, rng: np.random.Generator) -> tuple[str, str, str]:
    """Two distinct uniform random line starts (the text's start and end count as line starts): the middle is one or
    more whole lines, the hole an editor or HumanEval-infilling asks about. A line start is usually a pre-token
    boundary of cl100k-style tokenizers (not inside a run of blank lines, whose newlines merge), so the pieces mostly
    tokenize as the whole document does."""
    starts = [0] + [i + 1 for i, c in enumerate(text) if c == "\n" and i + 1 < len(text)] + [len(text)]
    lo, hi = sorted(int(starts[i]) for i in rng.choice(len(starts), size=2, replace=False))
    return text[:lo], text[lo:hi], text[hi:]


FIM_SPLITS = {"char": fim_split_text, "line": fim_split_lines}


class FillInTheMiddle(NextTokenObjective):
    """Context-level FIM, applied per document segment as it appears in the window.

    Trade-offs, on purpose:
    - Segments cut by the window edges (the tail of a document at the start, the head of one at the end) are
      transformed like whole documents, as bigcode's Megatron-LM does (it permutes every end-of-text-delimited
      segment of the sample). The alternative, skipping partial segments, would leave most of a long document's
      windows untransformed, because documents are usually longer than the window; the partial segment at the end
      simply has no end-of-text after its middle, exactly as in the untransformed window.
    - Text is decoded with `surrogateescape`, so a segment cut inside a multi-byte character (windows are cut at
      token boundaries) round-trips byte for byte instead of gaining U+FFFD replacement characters.
    - The pieces are tokenized separately, as they are at inference time (a prompt's prefix is encoded on its own),
      so the token boundaries at the split points match what the model sees when asked to infill.
    - The sentinels and re-tokenization make the sequence longer than the window; the tail is trimmed (the FIM
      paper's context-level FIM, section 4). Reported bits/byte use the raw split's bytes/token, so `fim` bpb
      is comparable across FIM models, not with `l2r` bpb.
    - `fim_split="char"` (default) cuts at uniform characters, as the FIM paper does: nearly every cut falls inside a
      token, which teaches robustness to any hole but makes each seam a spelling problem that small models learn
      slowly. `"line"` cuts at line starts (whole-line middles): the seams mostly tokenize as the whole document
      does, and a small model learns the format in far fewer steps (tests/test_infill.py trains one in CI).
    """

    name = "fim"

    def __init__(self, tokenizer, fim_rate: float = 0.5, fim_spm_rate: float = 0.5, fim_split: str = "char",
                 attention_mask: str = CAUSAL, **_):
        if not 0.0 <= fim_rate <= 1.0:
            raise ConfigError(f"--fim-rate must be in [0, 1], got {fim_rate}")
        if fim_split not in FIM_SPLITS:
            raise ConfigError(f"--fim-split must be one of {', '.join(FIM_SPLITS)}, got {fim_split!r}")
        self.tokenizer = tokenizer
        self.rate, self.spm_rate = fim_rate, fim_spm_rate
        self.split = FIM_SPLITS[fim_split]
        self.marker, self.eot, self.pad = tokenizer.l2r_id, tokenizer.eot_id, tokenizer.pad_id
        self.attention_mask = check_attention_mask(attention_mask)

    def _text(self, ids: np.ndarray) -> str:
        return self.tokenizer.decode_bytes(ids.tolist()).decode("utf-8", errors="surrogateescape")

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode_bytes(text.encode("utf-8", errors="surrogateescape"))

    def fim_format(self, prefix: str, middle: str, suffix: str, spm: bool) -> list[int]:
        return fim_layout(self.tokenizer, self._encode(prefix), self._encode(suffix), "spm" if spm else "psm",
                          self._encode(middle))

    def transform_window(self, window: np.ndarray, rng: np.random.Generator) -> list[int]:
        """One raw window -> its FIM token sequence (not yet trimmed to the window length)."""
        out: list[int] = []
        for k, segment in enumerate(split_segments(window, self.eot)):
            if k > 0:
                out.append(self.eot)
            if len(segment) and rng.random() < self.rate:
                spm = bool(rng.random() < self.spm_rate)
                out.extend(self.fim_format(*self.split(self._text(segment), rng), spm=spm))
            else:
                out.extend(segment.tolist())
        return out

    def make_batch(self, windows: np.ndarray, rng: np.random.Generator | None = None, split: str = "train") -> Batch:
        rng = rng if rng is not None else np.random.default_rng()
        B, T = windows.shape
        if self.attention_mask == DOCUMENT:  # each transformed document its own block: [<l2r> <eot> <PRE> ...]
            rows = [np.asarray(self.transform_window(w, rng), dtype=np.int64) for w in windows]
            return document_batch(rows, self.tokenizer, self.marker, T, self.name)
        y = torch.full((B, T), IGNORE, dtype=torch.long)
        x = torch.full((B, T), self.pad, dtype=torch.long)
        for b in range(B):
            seq = torch.tensor(self.transform_window(windows[b], rng)[:T], dtype=torch.long)
            y[b, :len(seq)] = seq
            x[b, 0] = self.marker
            x[b, 1:len(seq)] = seq[:-1]
        return Batch(x, y, self.name)


# ----------------------------------------------------------------------------------------------------------------
# mim
# ----------------------------------------------------------------------------------------------------------------
MIM_CHUNK_ELEMENTS = 1 << 21  # rows per chunk x vocabulary: 8 MB of float32 per temporary


def total_variation(logits_a: torch.Tensor, logits_b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over positions of 1/2 sum_z |p_a(z) - p_b(z)| (MIM paper section 3, the agreement regularizer), by the
    direct formula: for analysis, and the reference that the fused training loss below is tested against.
    logits [..., V]; mask [...] bool (positions to include)."""
    V, dtype = logits_a.shape[-1], torch.promote_types(logits_a.dtype, torch.float32)
    p_a = torch.softmax(logits_a.reshape(-1, V).to(dtype), dim=-1)
    p_b = torch.softmax(logits_b.reshape(-1, V).to(dtype), dim=-1)
    rows = 0.5 * (p_a - p_b).abs().sum(-1)
    weight = torch.ones_like(rows) if mask is None else mask.reshape(-1).to(rows)
    return (rows * weight).sum() / weight.sum().clamp(min=1)


def _softmax_rows(logits: torch.Tensor, y: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities of [c, V] rows computed in `dtype` — float32, or float64 for checks —, summed NLL of the rows
    whose target is not IGNORE). One fused log-softmax, then exp in place: the fewest passes over the rows."""
    logp = torch.log_softmax(logits.to(dtype), dim=-1)
    valid = y != IGNORE
    nll = -(logp.gather(1, torch.where(valid, y, 0).unsqueeze(1)).squeeze(1) * valid).sum()
    return logp.exp_(), nll


def _nll_grad_(p: torch.Tensor, y: torch.Tensor, scale: float) -> None:
    """Turns the softmax rows `p` into scale * (p - onehot(y)) in place, zero on rows whose target is IGNORE."""
    valid = y != IGNORE
    p.mul_(valid.unsqueeze(1).to(p.dtype) * scale)
    p.scatter_add_(1, torch.where(valid, y, 0).unsqueeze(1), (valid.to(p.dtype) * -scale).unsqueeze(1))


def _row_dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[c, V] x [c, V] -> [c, 1]: each row's dot product, as a batched matrix product (no [c, V] temporary)."""
    return torch.bmm(x.unsqueeze(1), y.unsqueeze(2)).view(-1, 1)


# The chunk loops below run eagerly as one pass over a [rows x vocabulary] chunk per operation (a dozen for MIM);
# the kernels here are the same chunk arithmetic written as whole expressions, which torch.compile fuses into a few
# passes (an l2r step at the nanoGPT shape spent ~9% of its time in the eager loss). Two stages, compiled apart, so
# the exponentials are computed once and kept (a float32 chunk, cache-sized) instead of recomputed by every pass
# that reads them: 1.3-1.4x faster than one fused kernel, measured. The trainer switches them on when it compiles
# the blocks (train.compile_losses); tests/test_objectives.py holds both forms equal.
def _exp_kernel(logits: torch.Tensor, y: torch.Tensor):
    """[c, V] rows -> (summed NLL of the rows with a target, e = exp(x - rowmax) in float32, the rows' sums of e):
    softmax = e / sum."""
    x = logits.float()
    valid = (y != IGNORE).unsqueeze(1)
    top = x.amax(dim=-1, keepdim=True)
    e = torch.exp(x - top)
    total = e.sum(dim=-1, keepdim=True)
    nll = ((torch.log(total) + top - x.gather(1, torch.where(valid, y.unsqueeze(1), 0))) * valid).sum()
    return nll, e, total


def _onehot_weight(y: torch.Tensor, vocab: int, scale: torch.Tensor):
    """(onehot(y) [c, V], scale on rows with a target and 0 elsewhere [c, 1])."""
    valid = (y != IGNORE).unsqueeze(1)
    onehot = torch.arange(vocab, device=y.device) == torch.where(valid, y.unsqueeze(1), 0)
    return onehot.float(), valid * scale


def _nll_grad_kernel(e: torch.Tensor, total: torch.Tensor, y: torch.Tensor, scale: torch.Tensor,
                     grad: torch.Tensor) -> None:
    """Writes `grad` = scale * (softmax - onehot(y)), zero on rows without a target (`_nll_grad_`)."""
    onehot, w = _onehot_weight(y, e.shape[-1], scale)
    grad.copy_((e / total - onehot) * w)


def _mim_grad_kernel(e_a, total_a, e_b, total_b, y_a, y_b, scale_a, scale_b, tv_scale, grad_a, grad_b,
                     with_tv: bool, stop_grad: bool) -> torch.Tensor:
    """One chunk of _MimLoss from the two stages' exponentials of aligned forward rows a and backward rows b: writes
    both gradients, returns the summed L1 distance of the two softmaxes over rows where a has a target."""
    p_a, p_b = e_a / total_a, e_b / total_b
    onehot_a, w_a = _onehot_weight(y_a, e_a.shape[-1], scale_a)
    onehot_b, w_b = _onehot_weight(y_b, e_b.shape[-1], scale_b)
    g_a, g_b = (p_a - onehot_a) * w_a, (p_b - onehot_b) * w_b
    tv = torch.zeros((), device=e_a.device)
    if with_tv:
        has_target = (y_a != IGNORE).unsqueeze(1)
        d = p_a - p_b
        sign, w = torch.sign(d), has_target * tv_scale
        tv = (d.abs().sum(-1, keepdim=True) * has_target).sum()
        g_a = g_a + (sign - (sign * p_a).sum(-1, keepdim=True)) * p_a * w
        if not stop_grad:
            g_b = g_b + ((sign * p_b).sum(-1, keepdim=True) - sign) * p_b * w
    grad_a.copy_(g_a)
    grad_b.copy_(g_b)
    return tv


def _scaled_(grad: torch.Tensor, grad_loss: torch.Tensor) -> torch.Tensor:
    """The fused losses' backward: their stored gradient times the incoming one, in place — skipped when that is 1
    (a plain loss.backward()), a pass over a logits-sized tensor (reading a 0-d CPU tensor costs nothing; on CUDA
    it would wait for the GPU, so there it always multiplies)."""
    if grad_loss.device.type == "cpu" and grad_loss.numel() == 1 and float(grad_loss) == 1.0:
        return grad
    return grad.mul_(grad_loss)


@functools.cache
def _compiled(kernel):
    # dynamic: one compilation for every chunk height (a short last chunk, curriculum contexts, mixtures), where
    # static shapes compiled each anew: 11.5 s against 15 s at the first step of a tiny MIM run, as fast after
    return torch.compile(kernel, dynamic=True)


class _MimLoss(torch.autograd.Function):
    """NLL_fwd + NLL_bwd + beta * TV over aligned row pairs of one [2B, T, V] logits tensor, with the value and the
    gradient computed together, one chunk of rows at a time.

    Autograd through the direct formula keeps two log-softmaxes for the cross-entropies and, for TV, two softmaxes,
    their difference and its sign: six [2B*T, V] float32 tensors beside the logits, each read again in backward.
    Here each chunk computes both softmaxes once and writes its gradient at once, using TV's closed form: with
    s = sign(p_a - p_b) for the aligned rows a (forward) and b (backward),
        d TV_row / d a_j = 1/2 p_a_j (s_j - sum_z s_z p_a_z),    d TV_row / d b_j = 1/2 p_b_j (sum_z s_z p_b_z - s_j)
    (|x| is not differentiable at 0; sign 0 there, autograd's choice too). Only the gradient, the size of the
    logits, outlives the chunk; backward scales it by the incoming gradient (in place: no second backward)."""

    @staticmethod
    def forward(ctx, logits, y, n_forward: int, beta: float, stop_grad: bool, pairs, compiled: bool = False):
        # in float32 whatever the caller's autocast: under bf16 autocast the row dot products would each cast two
        # [rows x vocab] operands and run as tiny bf16 matrix products (measured slower than the unfused loss)
        with torch.autocast(logits.device.type, enabled=False):
            return _MimLoss._forward(ctx, logits, y, n_forward, beta, stop_grad, pairs, compiled)

    @staticmethod
    def _forward(ctx, logits, y, n_forward: int, beta: float, stop_grad: bool, pairs, compiled: bool):
        T, V = logits.shape[1:]
        flat = logits.detach().reshape(-1, V)  # the gradient is computed here (and the kernels then see one kind)
        n_fwd_rows = n_forward * T
        # forward row b*T + i and the backward row that predicts the same token: (n_forward + b)*T + T-1-i, or as
        # the document layout paired them
        if pairs is None:
            i = torch.arange(n_fwd_rows, device=logits.device)
            bwd_rows = (n_forward + i // T) * T + (T - 1 - i % T)
        else:
            bwd_rows = pairs
        y_fwd, y_bwd = y[:n_forward].reshape(-1), y.reshape(-1)[bwd_rows]
        n_f = max(int((y_fwd != IGNORE).sum()), 1)
        n_b = max(int((y_bwd != IGNORE).sum()), 1)
        dtype = torch.promote_types(logits.dtype, torch.float32)
        # the gradient in the logits' dtype (bf16 logits: rounded as the backward of an upcast would round it)
        grad = torch.empty(flat.shape, dtype=logits.dtype, device=flat.device)  # every row is written below
        nll_f = nll_b = tv = torch.zeros((), dtype=dtype, device=flat.device)
        rows = max(1, MIM_CHUNK_ELEMENTS // V)
        if compiled:
            scales = [torch.tensor(v, dtype=dtype, device=flat.device) for v in (1 / n_f, 1 / n_b, 0.5 * beta / n_f)]
        for s0 in range(0, n_fwd_rows, rows):
            s1 = min(s0 + rows, n_fwd_rows)
            br = bwd_rows[s0:s1]
            a, b = flat[s0:s1], flat.index_select(0, br)
            if compiled:
                chunk_nll_a, e_a, total_a = _compiled(_exp_kernel)(a, y_fwd[s0:s1])
                chunk_nll_b, e_b, total_b = _compiled(_exp_kernel)(b, y_bwd[s0:s1])
                g_b = torch.empty_like(b)
                chunk_tv = _compiled(_mim_grad_kernel)(e_a, total_a, e_b, total_b, y_fwd[s0:s1], y_bwd[s0:s1],
                                                       *scales, grad[s0:s1], g_b, beta > 0, stop_grad)
                nll_f, nll_b, tv = nll_f + chunk_nll_a, nll_b + chunk_nll_b, tv + chunk_tv
                grad.index_copy_(0, br, g_b)
                continue
            p_a, chunk_nll_a = _softmax_rows(a, y_fwd[s0:s1], dtype)
            p_b, chunk_nll_b = _softmax_rows(b, y_bwd[s0:s1], dtype)
            if beta > 0:
                w = (y_fwd[s0:s1] != IGNORE).to(p_a.dtype).unsqueeze(1)  # TV on positions with a target
                d = p_a - p_b
                sign = torch.sign(d)
                tv = tv + (torch.linalg.vector_norm(d, ord=1, dim=-1) * w.squeeze(1)).sum()
                w = w * (0.5 * beta / n_f)
                g_a = torch.sub(sign, _row_dot(sign, p_a), out=d).mul_(p_a).mul_(w)
                g_b = None if stop_grad else (_row_dot(sign, p_b) - sign).mul_(p_b).mul_(w)
            nll_f, nll_b = nll_f + chunk_nll_a, nll_b + chunk_nll_b
            _nll_grad_(p_a, y_fwd[s0:s1], 1.0 / n_f)
            _nll_grad_(p_b, y_bwd[s0:s1], 1.0 / n_b)
            if beta > 0:
                p_a.add_(g_a)
                if g_b is not None:
                    p_b.add_(g_b)
            grad[s0:s1] = p_a
            grad.index_copy_(0, br, p_b.to(grad.dtype))
        ctx.save_for_backward(grad)
        ctx.logits_dtype, ctx.logits_shape, ctx.done = logits.dtype, logits.shape, False
        metrics = torch.stack([nll_f / n_f, nll_b / n_b, 0.5 * tv / n_f])
        ctx.mark_non_differentiable(metrics)
        return metrics[0] + metrics[1] + beta * metrics[2], metrics

    @staticmethod
    def backward(ctx, grad_loss, _grad_metrics):
        if ctx.done:
            raise RuntimeError("the fused MIM loss scales its stored gradient in place: one backward per forward")
        ctx.done = True
        (grad,) = ctx.saved_tensors
        return _scaled_(grad, grad_loss).view(ctx.logits_shape), None, None, None, None, None, None


class _NextTokenLoss(torch.autograd.Function):
    """Mean next-token cross-entropy whose gradient, softmax(logits) - onehot(y) over the valid count, is computed
    in the forward pass a chunk of rows at a time (float32 inside) and kept in the logits' dtype: no float32 copy of
    the logits, no stored log-softmax. F.cross_entropy on bf16 logits would upcast all of them and keep the float32
    log-softmax for backward. Same value and gradient (tests/test_objectives.py)."""

    @staticmethod
    def forward(ctx, logits, y, compiled: bool = False):
        with torch.autocast(logits.device.type, enabled=False):
            V = logits.shape[-1]
            flat, y = logits.detach().reshape(-1, V), y.reshape(-1)  # as in _MimLoss
            n = max(int((y != IGNORE).sum()), 1)
            dtype = torch.promote_types(logits.dtype, torch.float32)
            grad = torch.empty(flat.shape, dtype=logits.dtype, device=flat.device)
            nll = torch.zeros((), dtype=dtype, device=flat.device)
            rows = max(1, MIM_CHUNK_ELEMENTS // V)
            scale = torch.tensor(1.0 / n, dtype=dtype, device=flat.device)
            for s0 in range(0, flat.shape[0], rows):
                if compiled:
                    chunk_nll, e, total = _compiled(_exp_kernel)(flat[s0:s0 + rows], y[s0:s0 + rows])
                    _compiled(_nll_grad_kernel)(e, total, y[s0:s0 + rows], scale, grad[s0:s0 + rows])
                    nll = nll + chunk_nll
                    continue
                p, chunk_nll = _softmax_rows(flat[s0:s0 + rows], y[s0:s0 + rows], dtype)
                _nll_grad_(p, y[s0:s0 + rows], 1.0 / n)
                grad[s0:s0 + rows] = p
                nll = nll + chunk_nll
        ctx.save_for_backward(grad)
        ctx.logits_shape, ctx.done = logits.shape, False
        return nll / n

    @staticmethod
    def backward(ctx, grad_loss):
        if ctx.done:
            raise RuntimeError("the fused next-token loss scales its stored gradient in place: one backward per forward")
        ctx.done = True
        (grad,) = ctx.saved_tensors
        return _scaled_(grad, grad_loss).view(ctx.logits_shape), None, None


def fused_next_token_loss(logits: torch.Tensor, y: torch.Tensor, compiled: bool = False) -> torch.Tensor:
    """`next_token_loss(logits, y)` (mean over targets that are not IGNORE) for training: see _NextTokenLoss;
    `compiled`: its chunks through the compiled kernels (_exp_kernel, _nll_grad_kernel)."""
    if not logits.requires_grad:
        return next_token_loss(logits.float(), y)
    return _NextTokenLoss.apply(logits, y, compiled)


def mim_loss(logits: torch.Tensor, y: torch.Tensor, n_forward: int, beta: float = 0.1, stop_grad: bool = False,
             pairs: torch.Tensor | None = None, compiled: bool = False):
    """(loss, [nll_fwd, nll_bwd, tv]) for a MIM batch: logits [2B, T, V] of the forward rows then the backward rows
    (as `MeetInTheMiddle.make_batch` lays them out), targets y [2B, T]. TV averages over positions whose forward
    target is not IGNORE. `stop_grad` keeps the TV gradient out of the backward rows. `pairs` [B*T]: for each
    forward row position (flattened), the flattened index of the backward position predicting the same token (a
    permutation of the backward positions; default: the time-reversed one, T-1-i)."""
    loss, metrics = _MimLoss.apply(logits, y, n_forward, float(beta), bool(stop_grad), pairs, compiled)
    return loss, metrics


class MeetInTheMiddle:
    """Both directions in one forward pass; the forward half of the batch is an ordinary l2r model.

    `mim_stop_grad` detaches the backward distribution inside the TV term, so agreement only pulls the forward
    model towards the backward one (the paper is silent; the default lets gradients flow to both directions,
    which is the plain reading of a shared-weight regularizer)."""

    name = "mim"
    compiled_loss = False  # as NextTokenObjective's

    def __init__(self, tokenizer, mim_beta: float = 0.1, mim_stop_grad: bool = False, attention_mask: str = CAUSAL,
                 **_):
        if mim_beta < 0:
            raise ConfigError(f"--mim-beta must be >= 0, got {mim_beta}")
        self.tokenizer, self.l2r, self.r2l = tokenizer, tokenizer.l2r_id, tokenizer.r2l_id
        self.beta, self.stop_grad = mim_beta, mim_stop_grad
        self.attention_mask = check_attention_mask(attention_mask)

    def make_batch(self, windows: np.ndarray, rng: np.random.Generator | None = None, split: str = "train") -> Batch:
        if self.attention_mask == DOCUMENT:
            return self.document_batch(windows)
        w = torch.from_numpy(windows.astype(np.int64))
        r = w.flip(1)
        x = torch.cat([with_marker(self.l2r, w), with_marker(self.r2l, r)])
        y = torch.cat([w, r])
        return Batch(x, y, self.name, {"n_forward": w.shape[0]})

    def document_batch(self, windows: np.ndarray) -> Batch:
        """Both directions in the document layout of the longest prefix of each window that fits (codelm/packing.py),
        so that they predict the same tokens, with each forward prediction's backward partner in `pairs`."""
        B, T = windows.shape
        tok = self.tokenizer
        kept = [w[:fitting_prefix(w, tok.eot_id, T)] for w in windows]
        fwd = [pack_row(w, tok.eot_id, self.l2r, tok.pad_id, T, IGNORE) for w in kept]
        bwd = [pack_row(w[::-1], tok.eot_id, self.r2l, tok.pad_id, T, IGNORE) for w in kept]
        x, y, positions, blocks = (torch.from_numpy(np.stack([r[i] for r in fwd + bwd]).astype(np.int64))
                                   for i in range(4))
        pairs = np.concatenate([(B + b) * T + mim_pairs(f[4], r[4], len(w))
                                for b, (f, r, w) in enumerate(zip(fwd, bwd, kept))])
        return Batch(x, y, self.name, {"n_forward": B, "positions": positions, "blocks": blocks,
                                       "pairs": torch.from_numpy(pairs)})

    def directions(self, model, batch: Batch):
        """(forward logits, backward logits flipped so index i predicts w_i in both, fwd targets, bwd targets).
        The flip aligns the directions of a causal-mask batch only (a document-packed one pairs by `pairs`)."""
        n = batch.extra["n_forward"]
        logits = model(batch.x, **batch.model_inputs())
        return logits[:n], logits[n:].flip(1), batch.y[:n], batch.y[n:]

    def loss(self, model, batch: Batch) -> tuple[torch.Tensor, dict]:
        loss, (nll_fwd, nll_bwd, tv) = mim_loss(model(batch.x, **batch.training_inputs()), batch.y,
                                                 batch.extra["n_forward"], self.beta, self.stop_grad,
                                                 batch.extra.get("pairs"), self.compiled_loss)
        metrics = {"loss_mim_fwd": nll_fwd, "loss_mim_bwd": nll_bwd}
        if self.beta > 0:
            metrics["mim_tv"] = tv
        return loss, metrics

    def val_metrics(self, model, batch: Batch) -> dict[str, tuple[float, int]]:
        n = batch.extra["n_forward"]
        logits = model(batch.x, **batch.model_inputs())
        y_fwd, y_bwd = batch.y[:n], batch.y[n:]
        return {"mim_fwd": (float(next_token_loss(logits[:n], y_fwd, reduction="sum")), int((y_fwd != IGNORE).sum())),
                "mim_bwd": (float(next_token_loss(logits[n:], y_bwd, reduction="sum")), int((y_bwd != IGNORE).sum()))}


# ----------------------------------------------------------------------------------------------------------------
# sft: completion-only fine-tuning
# ----------------------------------------------------------------------------------------------------------------
def read_completion_examples(path: str | Path) -> list[tuple[str, str]]:
    """(prompt, completion) pairs from JSONL; blank lines are skipped, anything else malformed names file:line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file (--sft-data expects a JSONL file with prompt/completion fields)")
    examples = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise DataError(f"{path}:{lineno}: not valid UTF-8") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line.strip())
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object with 'prompt' and 'completion' fields")
            for key in ("prompt", "completion"):
                if not isinstance(record.get(key), str):
                    problem = "missing" if key not in record else f"not a string ({type(record[key]).__name__})"
                    raise DataError(f"{path}:{lineno}: field {key!r} is {problem}")
            examples.append((record["prompt"], record["completion"]))
    if not examples:
        raise DataError(f"{path}: no examples (expected one JSON object per line with prompt/completion fields)")
    return examples


class CompletionOnly(NextTokenObjective):
    """Fine-tuning on (prompt, completion) pairs with the loss masked to the completion and its end-of-text.

    The shard window only sets the batch size and the length budget; examples are drawn with the trainer's seeded
    rng, so data order stays a pure function of (seed, step, micro-step) and resume stays exact. Every 20th example
    is held out for validation (`split="val"`); with fewer than 20 examples validation reuses the training ones.
    Prompt and completion are tokenized separately, as at inference time. An example longer than the window loses
    the beginning of its prompt first. Mixing with pretraining windows (`--objective sft:0.8,l2r:0.2`) is a cheap
    guard against forgetting. Trade-off: batches are padded to their longest example, not packed.
    """

    name = "sft"
    HOLD_OUT_EVERY = 20

    def __init__(self, tokenizer, sft_data: str = "", **_):
        if not sft_data:
            raise ConfigError("--objective sft needs --sft-data FILE.jsonl (prompt/completion per line)")
        self.marker, self.eot, self.pad = tokenizer.l2r_id, tokenizer.eot_id, tokenizer.pad_id
        pairs = read_completion_examples(sft_data)
        prompts = tokenizer.encode_batch([p for p, _ in pairs])
        completions = tokenizer.encode_batch([c for _, c in pairs])
        examples = list(zip(prompts, completions))
        held = [i % self.HOLD_OUT_EVERY == self.HOLD_OUT_EVERY - 1 for i in range(len(examples))]
        self.splits = {"train": [e for e, h in zip(examples, held) if not h],
                       "val": [e for e, h in zip(examples, held) if h]}
        if not self.splits["val"]:
            self.splits["val"] = self.splits["train"]

    def example_tokens(self, prompt: list[int], completion: list[int], T: int) -> tuple[list[int], list[int]]:
        """(inputs, targets) of at most T tokens: [<l2r>, prompt, completion] predicting [prompt, completion, eot]
        with the prompt's targets ignored."""
        seq = prompt + completion + [self.eot]
        tgt = [IGNORE] * len(prompt) + completion + [self.eot]
        seq, tgt = seq[-T:], tgt[-T:]
        return [self.marker] + seq[:-1], tgt

    def make_batch(self, windows: np.ndarray, rng: np.random.Generator | None = None, split: str = "train") -> Batch:
        rng = rng if rng is not None else np.random.default_rng()
        B, T = windows.shape
        pool = self.splits["val" if split == "val" else "train"]
        rows = [self.example_tokens(*pool[int(i)], T) for i in rng.integers(0, len(pool), size=B)]
        L = max(len(x) for x, _ in rows)
        x = torch.full((B, L), self.pad, dtype=torch.long)
        y = torch.full((B, L), IGNORE, dtype=torch.long)
        for b, (xs, ys) in enumerate(rows):
            x[b, :len(xs)] = torch.tensor(xs)
            y[b, :len(ys)] = torch.tensor(ys)
        return Batch(x, y, self.name)


OBJECTIVES = {"l2r": LeftToRight, "fim": FillInTheMiddle, "mim": MeetInTheMiddle, "sft": CompletionOnly}


def parse_mixture(spec: str) -> dict[str, float]:
    """'mim' -> {'mim': 1.0}; 'mim:0.5,fim:0.5' -> weights over windows (normalised to sum 1)."""
    weights: dict[str, float] = {}
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        name, _, w = part.partition(":")
        name = name.strip()
        if name not in OBJECTIVES:
            raise ConfigError(f"unknown objective {name!r} in --objective {spec!r}; choose from "
                              f"{', '.join(OBJECTIVES)}")
        try:
            weight = float(w) if w else 1.0
        except ValueError:
            raise ConfigError(f"bad weight {w!r} for objective {name!r} in --objective {spec!r}") from None
        if not weight >= 0 or weight == float("inf"):
            raise ConfigError(f"weight of objective {name!r} in --objective {spec!r} must be finite and >= 0")
        weights[name] = weights.get(name, 0.0) + weight
    total = sum(weights.values())
    if not weights or total <= 0:
        raise ConfigError(f"--objective {spec!r} names no objective with a positive weight")
    return {k: v / total for k, v in weights.items() if v > 0}


def build_objectives(spec: str, tokenizer, **options) -> dict[str, object]:
    """One instance per objective in the mixture; options (fim_rate, mim_beta, mim_stop_grad, sft_data,
    attention_mask) go to whichever objective uses them."""
    return {name: OBJECTIVES[name](tokenizer, **options) for name in parse_mixture(spec)}

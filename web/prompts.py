"""Turning request text into the token prompts the model was trained on.

    completion   <|l2r|> prompt
    fim (PSM)    <|l2r|> [<|endoftext|>] <|fim_prefix|> prefix <|fim_suffix|> suffix <|fim_middle|> [`prompt`]

The end-of-text comes before a prefix that is the start of its file, as a whole document follows one in packed
training windows (codelm.infill.document_head).

Every forward window starts with `<|l2r|>` in training, whatever the objective (ARCHITECTURE.md), so every
prompt does too. Text is always encoded as text: a sentinel's string inside user text is never a sentinel, except in
`split_sentinel_prompt`, the one documented exception for clients that build this model's template themselves.

Long inputs are trimmed, not refused: editors send whole files, and the text nearest the cursor matters most, so a
prefix loses its beginning and a suffix its end (codelm.infill.fit_fim_context, shared with evaluation).
"""

from __future__ import annotations

from dataclasses import dataclass

from codelm.infill import document_head, fit_fim_context
from codelm.tokenizer import FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX

# the PSM template clients may send as raw text (Continue's "qwen-coder" template has exactly these sentinels)
FIM_TEMPLATE = FIM_PREFIX + "{prefix}" + FIM_SUFFIX + "{suffix}" + FIM_MIDDLE


@dataclass
class Prompt:
    ids: list[int]
    truncated: bool


def completion_prompt(tokenizer, text: str, budget: int) -> Prompt:
    """The BOS marker (none for a tokenizer without one: Qwen2.5-Coder, StarCoder), then the text's last tokens."""
    ids = tokenizer.encode(text)
    head = [tokenizer.l2r_id] if tokenizer.l2r_id is not None else []
    room = max(budget - len(head), 0)
    kept = ids[-room:] if room else []
    return Prompt(head + kept, len(kept) < len(ids))


def fim_prompt(tokenizer, prefix: str, suffix: str, budget: int, middle_start: str = "") -> Prompt:
    """PSM prompt within `budget` tokens; `middle_start` is text the middle must begin with (llama.cpp's prompt).
    The same ids as `codelm.infill.fim_infill` makes, end-of-text before a prefix that starts the file included."""
    pre, suf, mid = tokenizer.encode(prefix), tokenizer.encode(suffix), tokenizer.encode(middle_start)
    room = max(budget - 5 - len(mid), 0)              # 5 = marker + end-of-text + three sentinels
    pre_kept, suf_kept = fit_fim_context(pre, suf, room)
    head = document_head(tokenizer, tokenizer.l2r_id, starts_document=len(pre_kept) == len(pre))
    ids = (head + [tokenizer.fim_prefix_id] + pre_kept + [tokenizer.fim_suffix_id] + suf_kept
           + [tokenizer.fim_middle_id] + mid)
    return Prompt(ids, len(pre_kept) < len(pre) or len(suf_kept) < len(suf))


def split_sentinel_prompt(text: str) -> tuple[str, str] | None:
    """(prefix, suffix) when `text` is exactly this model's PSM template filled in, else None.

    Clients such as llm-vscode or Continue format the FIM template themselves and send it as a raw prompt. Only the
    served model's own template is recognised (anything else stays ordinary text), and `--no-raw-fim` turns it off."""
    if not (text.startswith(FIM_PREFIX) and text.endswith(FIM_MIDDLE)):
        return None
    body = text[len(FIM_PREFIX):-len(FIM_MIDDLE)]
    if body.count(FIM_SUFFIX) != 1 or FIM_PREFIX in body or FIM_MIDDLE in body:
        return None
    prefix, suffix = body.split(FIM_SUFFIX)
    return prefix, suffix

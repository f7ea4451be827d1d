"""Token layouts, in one place: what the model reads in training and what decoding, evaluation and the server feed
it, and how a long input is cut to fit.

    completion   [marker] text                                       (the text's end is kept)
    FIM, PSM     [marker] [<|endoftext|>] <PRE> prefix <SUF> suffix <MID> [middle]
    FIM, SPM     [marker] [<|endoftext|>] <PRE> <SUF> suffix <MID> prefix [middle]

Training writes the middle after the layout (codelm.objectives); a prompt stops at <MID> (plus any text the middle
must begin with). SPM is the FIM paper's variant 2 (Bavarian et al. 2022, section 3.1 and its appendix): the prefix
runs straight into the middle. Sentinels are special tokens, never text. Long inputs are trimmed, not refused: the
text nearest the hole or the cursor matters most, so a prefix loses its beginning and a suffix its end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from codelm.errors import ConfigError

FIM_FORMATS = ("psm", "spm")
FIM_SENTINELS = 3  # <PRE>, <SUF>, <MID>


@dataclass
class Prompt:
    ids: list[int]
    truncated: bool  # part of the input was cut to fit


def fim_layout(tokenizer, prefix_ids: Sequence[int], suffix_ids: Sequence[int], fim_format: str = "psm",
               middle_ids: Sequence[int] = ()) -> list[int]:
    """The FIM sentinels around prefix, suffix (and middle) token ids, in the PSM or SPM order."""
    pre, suf, mid = list(prefix_ids), list(suffix_ids), list(middle_ids)
    if fim_format == "psm":
        return [tokenizer.fim_prefix_id] + pre + [tokenizer.fim_suffix_id] + suf + [tokenizer.fim_middle_id] + mid
    if fim_format == "spm":
        return [tokenizer.fim_prefix_id, tokenizer.fim_suffix_id] + suf + [tokenizer.fim_middle_id] + pre + mid
    raise ConfigError(f"unknown FIM format {fim_format!r}; choose from {', '.join(FIM_FORMATS)}")


def document_head(tokenizer, bos: int | None, starts_document: bool) -> list[int]:
    """The tokens before a whole document's FIM example or forward reading: the BOS marker, then end-of-text.

    In a packed training window a whole document always follows the previous document's end-of-text; straight after
    the `<l2r>` marker come only window-initial fragments, the tails of documents cut by the window start. A prompt
    whose prefix is a file's beginning is the former, and a micro model trained with `mim:0.5,fim:0.5` reproduces
    far more memorised middles with it (PSM 45 -> 53 and SPM 57 -> 61 of 61 line holes); a prefix trimmed at its
    start is the latter and gets no end-of-text. MIM's backward side has the mirror image: the suffix ends with it."""
    return ([bos] if bos is not None else []) + ([tokenizer.eot_id] if starts_document else [])


def fit_fim_context(prefix_ids: list[int], suffix_ids: list[int], room: int) -> tuple[list[int], list[int]]:
    """Trim the prefix's start and the suffix's end (the parts farthest from the hole) to fit `room` tokens; each
    side keeps at least half the room when it needs it."""
    if len(prefix_ids) + len(suffix_ids) <= room:
        return prefix_ids, suffix_ids
    keep_suffix = min(len(suffix_ids), max(room // 2, room - len(prefix_ids)))
    keep_prefix = room - keep_suffix
    return (prefix_ids[len(prefix_ids) - keep_prefix:] if keep_prefix > 0 else []), suffix_ids[:keep_suffix]


def fim_prompt_ids(tokenizer, prefix: str, suffix: str, fim_format: str = "psm", bos: int | None = None,
                   starts_document: bool = True) -> list[int]:
    """A whole FIM prompt, untrimmed. `starts_document`: the prefix is the document's beginning, so the prompt opens
    with end-of-text (see `document_head`)."""
    return (document_head(tokenizer, bos, starts_document)
            + fim_layout(tokenizer, tokenizer.encode(prefix), tokenizer.encode(suffix), fim_format))


def fim_prompt(tokenizer, prefix: str, suffix: str, budget: int, fim_format: str = "psm", bos: int | None = None,
               middle_start: str = "") -> Prompt:
    """A FIM prompt of at most `budget` tokens, prefix and suffix trimmed to fit (`fit_fim_context`); the
    end-of-text opens it only when the prefix kept its beginning. `middle_start`: text the middle must begin with."""
    pre, suf, mid = tokenizer.encode(prefix), tokenizer.encode(suffix), tokenizer.encode(middle_start)
    room = max(budget - (bos is not None) - 1 - FIM_SENTINELS - len(mid), 0)  # 1: the end-of-text
    pre_kept, suf_kept = fit_fim_context(pre, suf, room)
    head = document_head(tokenizer, bos, starts_document=len(pre_kept) == len(pre))
    ids = head + fim_layout(tokenizer, pre_kept, suf_kept, fim_format) + mid
    return Prompt(ids, len(pre_kept) < len(pre) or len(suf_kept) < len(suf))


def completion_prompt(ids: Sequence[int], budget: int, bos: int | None) -> Prompt:
    """BOS + the text's last tokens, at most `budget` tokens in all."""
    room = budget - (bos is not None)
    kept = list(ids[-room:]) if room > 0 else []
    return Prompt(([bos] if bos is not None else []) + kept, len(kept) < len(ids))

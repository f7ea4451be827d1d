"""Token layouts, in one place: what the model reads in training and what decoding, evaluation and the server feed
it, and how a long input is cut to fit.

    completion   [marker] text                                       (the text's end is kept)
    FIM, PSM     [marker] [<|endoftext|>] <PRE> prefix <SUF> suffix <MID> [middle]
    FIM, SPM     [marker] [<|endoftext|>] <PRE> <SUF> suffix <MID> prefix [middle]

Other model families' FIM templates (StarCoder, SantaCoder, Code Llama, DeepSeek-Coder, Qwen2.5-Coder: `FIM_TEMPLATES`) are here
too, with the detection of a family from its tokenizer's sentinel tokens: an imported model infills with its own
family's template, whichever backend decodes it.

Training writes the middle after the layout (codelm.objectives); a prompt stops at <MID> (plus any text the middle
must begin with). SPM is the FIM paper's variant 2 (Bavarian et al. 2022, section 3.1 and its appendix): the prefix
runs straight into the middle. Sentinels are special tokens, never text. Long inputs are trimmed, not refused: the
text nearest the hole or the cursor matters most, so a prefix loses its beginning and a suffix its end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from codelm.errors import CapabilityError, ConfigError

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


def completion_prompt(ids: Sequence[int], budget: int, bos: int | Sequence[int] | None) -> Prompt:
    """BOS + the text's last tokens, at most `budget` tokens in all. `bos`: one marker id, or the ids a Hugging Face
    tokenizer's post-processor puts before a text (`special_head`), or None."""
    head = [] if bos is None else [bos] if isinstance(bos, int) else list(bos)
    room = budget - len(head)
    kept = list(ids[-room:]) if room > 0 else []
    return Prompt(head + kept, len(kept) < len(ids))


# ----------------------------------------------------------------------------------------------------------------
# Other model families' FIM templates
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FimTemplate:
    """A model family's FIM prompt as text. The tokenizer must treat `sentinels` as special tokens; generation stops
    at any of `stop` (the family's end-of-middle tokens)."""
    psm: str
    spm: str | None
    sentinels: tuple[str, ...]
    stop: tuple[str, ...]


FIM_TEMPLATES: dict[str, FimTemplate] = {
    # bigcode StarCoder / StarCoder2 / SantaCoder
    "starcoder": FimTemplate("<fim_prefix>{prefix}<fim_suffix>{suffix}<fim_middle>",
                             "<fim_prefix><fim_suffix>{suffix}<fim_middle>{prefix}",
                             ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"), ("<|endoftext|>", "<file_sep>")),
    # SantaCoder (Allal et al. 2023) spells its sentinels with hyphens
    "santacoder": FimTemplate("<fim-prefix>{prefix}<fim-suffix>{suffix}<fim-middle>",
                              "<fim-prefix><fim-suffix>{suffix}<fim-middle>{prefix}",
                              ("<fim-prefix>", "<fim-suffix>", "<fim-middle>"), ("<|endoftext|>",)),
    # Code Llama (Rozière et al. 2023): the spaces are part of the format
    "codellama": FimTemplate("<PRE> {prefix} <SUF>{suffix} <MID>", "<PRE> <SUF>{suffix} <MID> {prefix}",
                             ("<PRE>", "<SUF>", "<MID>"), ("<EOT>", "</s>")),
    # DeepSeek-Coder base models (fullwidth bars and U+2581 in the sentinel names)
    "deepseek-coder": FimTemplate("<｜fim▁begin｜>{prefix}<｜fim▁hole｜>{suffix}<｜fim▁end｜>", None,
                                  ("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),
                                  ("<｜end▁of▁sentence｜>", "<|EOT|>")),
    # Qwen2.5-Coder base models
    "qwen2.5-coder": FimTemplate("<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>", None,
                                 ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),
                                 ("<|endoftext|>", "<|fim_pad|>", "<|file_sep|>", "<|repo_name|>", "<|im_end|>")),
}


def fim_prompt_text(family: str, prefix: str, suffix: str, fim_format: str = "psm") -> str:
    """The FIM prompt of a model family as text, for tokenizers that map the sentinel strings to special tokens."""
    if family not in FIM_TEMPLATES:
        raise ConfigError(f"no FIM template for {family!r}; known: {', '.join(FIM_TEMPLATES)}")
    template = FIM_TEMPLATES[family]
    pattern = template.psm if fim_format == "psm" else template.spm if fim_format == "spm" else None
    if pattern is None:
        raise ConfigError(f"{family} has no {fim_format!r} FIM format")
    return pattern.replace("{prefix}", prefix).replace("{suffix}", suffix)  # not str.format: code has braces


def sentinel_id(vocab: Mapping[str, int], sentinel: str) -> int | None:
    """The id of a FIM sentinel, spelled as the template does or with SentencePiece's leading '▁' (Code Llama)."""
    for spelling in (sentinel, "\u2581" + sentinel):
        if spelling in vocab:
            return vocab[spelling]
    return None


def detect_fim_family(vocab: Mapping[str, int]) -> str | None:
    """The first family of FIM_TEMPLATES whose sentinels are all tokens of this vocabulary."""
    for family, template in FIM_TEMPLATES.items():
        if all(sentinel_id(vocab, s) is not None for s in template.sentinels):
            return family
    return None


def special_head(plain: Sequence[int], full: Sequence[int]) -> list[int]:
    """The ids a tokenizer's post-processor puts before a text (its BOS handling), from one probe encoded without
    (`plain`) and with (`full`) special tokens. Ids it would append (an EOS after the prompt) have no place in a
    prompt."""
    plain, full = list(plain), list(full)
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return full[:start]
    return []


def require_family_format(family: str | None, fim_format: str, name: str) -> str:
    """The family, checked: refuse (one line) a model whose tokenizer has no known family's FIM tokens, or a
    format its template lacks."""
    if family is None:
        known = ", ".join(f"{f} ({' '.join(t.sentinels)})" for f, t in FIM_TEMPLATES.items())
        raise CapabilityError(f"{name}: the tokenizer has no FIM tokens of a known family, so this model cannot "
                              f"infill; known: {known}")
    if fim_format not in FIM_FORMATS:
        raise ConfigError(f"unknown FIM format {fim_format!r}; choose from {', '.join(FIM_FORMATS)}")
    if fim_format == "spm" and FIM_TEMPLATES[family].spm is None:
        raise CapabilityError(f"{name}: the {family} FIM template has no 'spm' format")
    return family


def family_stop_ids(vocab: Mapping[str, int], family: str, eos_ids) -> frozenset[int]:
    """What ends a family-template middle: the model's end-of-sequence ids and the family's end-of-middle tokens."""
    stops = (sentinel_id(vocab, s) for s in FIM_TEMPLATES[family].stop)
    return frozenset(eos_ids) | {i for i in stops if i is not None}


def family_fim_prompt(encode: Callable[[str], list[int]], vocab: Mapping[str, int], head: Sequence[int], family: str,
                      prefix: str, suffix: str, budget: int, fim_format: str = "psm") -> Prompt:
    """A family's template as ids, at most `budget` tokens: `head` (the model's own BOS handling), the sentinel ids,
    and each text between two sentinels encoded whole, which is the sequence the family's tokenizer gives for the
    template text (its added tokens split the text), except that code spelling a sentinel stays text. A long prompt
    keeps the end of the prefix and the start of the suffix (fit_fim_context)."""
    template = FIM_TEMPLATES[family]
    pattern = template.psm if fim_format == "psm" else template.spm
    segments = _split_at(pattern, template.sentinels)

    def build(fill) -> list[int]:
        ids = list(head)
        for seg in segments:
            ids += [sentinel_id(vocab, seg)] if seg in template.sentinels else fill(seg)
        return ids

    whole = build(lambda seg: encode(seg.replace("{prefix}", prefix).replace("{suffix}", suffix)))
    if len(whole) <= budget:
        return Prompt(whole, False)
    literal = sum(len(encode(part)) for seg in segments if seg not in template.sentinels
                  for part in _split_at(seg, ("{prefix}", "{suffix}")) if part not in ("{prefix}", "{suffix}"))
    room = budget - len(head) - literal - len(template.sentinels)
    pre, suf = fit_fim_context(encode(prefix), encode(suffix), max(room, 0))
    values = {"{prefix}": pre, "{suffix}": suf}

    def trimmed(seg: str) -> list[int]:
        out = []
        for part in _split_at(seg, ("{prefix}", "{suffix}")):
            out += values[part] if part in values else encode(part)
        return out

    return Prompt(build(trimmed), True)


def _split_at(text: str, markers: Sequence[str]) -> list[str]:
    """'<a> x<b>' split at the markers, keeping them: ['<a>', ' x', '<b>'] (empty pieces dropped)."""
    pieces = [text]
    for marker in markers:
        pieces = [q for p in pieces for q in ([p] if p in markers else _interleave(p.split(marker), marker))]
    return [p for p in pieces if p]


def _interleave(parts: list[str], marker: str) -> list[str]:
    out = []
    for k, part in enumerate(parts):
        if k:
            out.append(marker)
        out.append(part)
    return out

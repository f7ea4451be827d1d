"""Raw FIM prompts from clients. The server builds its prompts with codelm.prompts (the layouts and the trimming
that training, decoding and evaluation use); this module only recognises a client's own rendering of this model's
PSM template, the one documented exception to "text is always encoded as text".
"""

from __future__ import annotations

from codelm.tokenizer import FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX

# the PSM template clients may send as raw text (Continue's "qwen-coder" template has exactly these sentinels)
FIM_TEMPLATE = FIM_PREFIX + "{prefix}" + FIM_SUFFIX + "{suffix}" + FIM_MIDDLE


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

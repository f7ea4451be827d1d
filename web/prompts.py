"""Raw FIM prompts from clients. The server builds its prompts with codelm.prompts (the layouts and the trimming
that training, decoding and evaluation use); this module only recognises a client's own rendering of this model's
PSM template, the one documented exception to "text is always encoded as text".
"""

from __future__ import annotations

from codelm.tokenizer import FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX

# codelm's PSM template as clients may send it as raw text (Continue's "qwen-coder" template has exactly these
# sentinels); an imported model's is its family's (codelm.prompts.FIM_TEMPLATES)
FIM_TEMPLATE = FIM_PREFIX + "{prefix}" + FIM_SUFFIX + "{suffix}" + FIM_MIDDLE


def split_sentinel_prompt(text: str, template: str = FIM_TEMPLATE) -> tuple[str, str] | None:
    """(prefix, suffix) when `text` is exactly the served model's PSM `template` filled in, else None.

    Clients such as llm-vscode or Continue format the FIM template themselves and send it as a raw prompt. Only the
    served model's own template is recognised (anything else stays ordinary text), and `--no-raw-fim` turns it off."""
    head, rest = template.split("{prefix}")
    middle, tail = rest.split("{suffix}")
    if not (text.startswith(head) and text.endswith(tail) and len(text) >= len(head) + len(tail)):
        return None
    body = text[len(head):len(text) - len(tail)]
    if body.count(middle) != 1 or head in body or tail in body:
        return None
    prefix, suffix = body.split(middle)
    return prefix, suffix

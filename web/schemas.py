"""Request bodies of the API, validated by pydantic. Unknown fields are ignored (clients send many we do not use).

Static bounds live here; bounds that depend on the served model or the server's flags (max_tokens, n, prompt
length) are checked in app.py against `ServeConfig`, with the same 422 error shape.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_TEXT_CHARS = 200_000  # a body field longer than this is refused before it is tokenized


def _stop_list(value) -> list[str]:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else list(value)
    if len(stops) > 8:
        raise ValueError("at most 8 stop strings")
    return [s for s in stops if s]


class CompletionRequest(BaseModel):
    """OpenAI's legacy completions body (`/v1/completions`), plus `mode` for infilling."""
    model_config = ConfigDict(extra="ignore")

    model: str | None = None                       # accepted and ignored: this server serves one model
    prompt: str | list[str] = Field("", description="text before the cursor (one prompt per request)")
    suffix: str | None = Field(None, max_length=MAX_TEXT_CHARS, description="text after the cursor: infill")
    max_tokens: int = Field(16, ge=0)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = Field(None, validate_default=True)
    stream: bool = False
    logprobs: int | None = Field(None, ge=0, le=5)
    seed: int | None = None
    echo: bool = False
    mode: Literal["fim", "mim"] | None = Field(None, description="infill decoding; default: fim if the model can")

    @field_validator("prompt")
    @classmethod
    def one_prompt(cls, v):
        if isinstance(v, list):
            if len(v) != 1:
                raise ValueError("send exactly one prompt per request (a list of one string is accepted)")
            v = v[0]
        if len(v) > MAX_TEXT_CHARS:
            raise ValueError(f"at most {MAX_TEXT_CHARS} characters")
        return v

    @field_validator("stop")
    @classmethod
    def stop_strings(cls, v):
        return _stop_list(v)


class ExtraChunk(BaseModel):
    model_config = ConfigDict(extra="ignore")
    filename: str = ""
    text: str = Field("", max_length=MAX_TEXT_CHARS)


class InfillRequest(BaseModel):
    """llama.cpp's `/infill` body, as llama.vim and llama.vscode send it. Defaults follow llama.cpp's server."""
    model_config = ConfigDict(extra="ignore")

    input_prefix: str = Field("", max_length=MAX_TEXT_CHARS)
    input_suffix: str = Field("", max_length=MAX_TEXT_CHARS)
    input_extra: list[ExtraChunk] = Field(default_factory=list, max_length=32)
    prompt: str = Field("", max_length=MAX_TEXT_CHARS, description="text placed after the middle sentinel")
    n_predict: int = Field(-1, ge=-1, description="-1: as many as the server allows")
    stream: bool = False
    temperature: float = Field(0.8, ge=0.0, le=2.0)
    top_k: int = Field(40, ge=0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    seed: int = -1                                   # -1: random, as in llama.cpp
    stop: list[str] | str | None = Field(None, validate_default=True)
    mode: Literal["fim", "mim"] | None = None

    @field_validator("stop")
    @classmethod
    def stop_strings(cls, v):
        return _stop_list(v)

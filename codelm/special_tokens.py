"""The special tokens every codelm tokenizer names, the roles they play, and the identity check: what both
implementations (codelm/tokenizer.py for tiktoken vocabularies, codelm/hf_tokenizer.py for a model's own Hugging Face
tokenizer) share, so that neither imports the other."""

from __future__ import annotations

from codelm.errors import TokenizerMismatch

EOT, FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX = "<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>"
L2R, R2L, PAD = "<|l2r|>", "<|r2l|>", "<|pad|>"
SPECIAL_NAMES = (EOT, FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, L2R, R2L, PAD)

ROLES = ("eot", "l2r", "r2l", "fim_prefix", "fim_middle", "fim_suffix", "pad")


def roles(tok) -> dict[str, int | None]:
    """The special ids by role (None where the tokenizer has no token for it)."""
    return {role: getattr(tok, f"{role}_id", None) for role in ROLES}


def check_same(tok, other, what: str) -> None:
    """Refuse to combine artefacts made with different tokenizers, naming both, in one line."""
    if isinstance(other, dict):
        other_hash, other_name = other.get("hash"), other.get("name")
    else:  # any tokenizer object
        other_hash, other_name = getattr(other, "hash", None), getattr(other, "name", type(other).__name__)
    if other_hash != tok.hash:
        raise TokenizerMismatch(f"{what} was made with tokenizer {other_name!r} ({str(other_hash)[:12]}), "
                                f"not {tok.name!r} ({tok.hash[:12]})")

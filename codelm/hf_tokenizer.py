"""An imported model's own tokenizer (`hf:DIR`): a Hugging Face `tokenizers.Tokenizer` behind codelm's tokenizer
interface (codelm/tokenizer.py lists it).

Its own module so that reading a codelm checkpoint whose tokenizer came from Hugging Face (codelm/checkpoint.py) does
not import the weight conversion (codelm/hf.py), which itself builds on checkpoints: imports point one way.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from pathlib import Path

from codelm.errors import CheckpointError, ConfigError
from codelm.prompts import FIM_TEMPLATES, detect_fim_family, sentinel_id, special_head
from codelm.special_tokens import R2L, check_same, roles

HF_WEIGHTS, HF_INDEX = "model.safetensors", "model.safetensors.index.json"
HF_CONFIG, HF_TOKENIZER, HF_TOKENIZER_CONFIG = "config.json", "tokenizer.json", "tokenizer_config.json"
HF_GENERATION_CONFIG = "generation_config.json"

R2L_TOKEN = R2L  # MIM's backward marker; added at import when a vocabulary lacks it


def _require_tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise ConfigError("Hugging Face interop needs the `tokenizers` package: pip install 'codelm[hf]'") from None
    return tokenizers


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (byte-level BPE vocabularies are spelled in it)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def read_json_if(path: Path) -> dict:
    """A JSON object file, or {} when it is absent (a corrupt one is an error naming the file)."""
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt JSON ({e})") from None
    return value if isinstance(value, dict) else {}


class HFTokenizer:
    """codelm's tokenizer interface over a Hugging Face fast tokenizer. `l2r_id` is the model's BOS token, or, for a
    model without one (Qwen2.5), its end-of-text: the separator that preceded every document in its packed
    pretraining, so the forward direction starts from what the model already knows and nothing untrained is put in
    front of a window. `eot_id` is its EOS; `pad_id` its pad token, else EOS (inputs past a sequence's end have no
    loss). FIM ids come from the family's own sentinels (codelm.prompts.FIM_TEMPLATES), `r2l_id` from `<|r2l|>`, when the
    vocabulary has them (`codelm import-hf --add-tokens` adds what is missing). As in codelm, special-token strings
    in text encode as text. encode_batch runs on the `tokenizers` Rayon thread pool (RAYON_NUM_THREADS sizes it)."""

    kind = "hf"

    def __init__(self, tokenizer_json: str, *, name: str, bos_id: int | None, eos_id: int | None,
                 pad_id: int | None = None):
        tokenizers = _require_tokenizers()
        self._json = tokenizer_json
        self._tok = tokenizers.Tokenizer.from_str(tokenizer_json)
        self._tok.encode_special_tokens = True
        self.name = name
        self.hash = hashlib.sha256(json.dumps(json.loads(tokenizer_json), sort_keys=True).encode()).hexdigest()
        added = self._tok.get_added_tokens_decoder()
        self.specials = {t.content: i for i, t in sorted(added.items()) if t.special}
        self.n_vocab = max([self._tok.get_vocab_size(with_added_tokens=True) - 1, *added]) + 1
        if eos_id is None:
            raise ConfigError(f"tokenizer {name!r}: no end-of-sequence token (eos_token) is defined")
        self.bos_id, self.eot_id, self.own_pad_id = bos_id, eos_id, pad_id
        self.l2r_id = bos_id if bos_id is not None else eos_id
        self.pad_id = pad_id if pad_id is not None else eos_id
        self.r2l_id = self._tok.token_to_id(R2L_TOKEN)
        self.fim_family = detect_fim_family(self._tok.get_vocab(with_added_tokens=True))
        self.fim_prefix_id = self.fim_middle_id = self.fim_suffix_id = None
        if self.fim_family is not None:  # a template's sentinels are (prefix, suffix, middle) in codelm's words
            self.fim_prefix_id, self.fim_suffix_id, self.fim_middle_id = self.fim_sentinel_ids()
        self._bytes = self._token_bytes_table()

    # --- construction -------------------------------------------------------------------------------------------
    @classmethod
    def from_path(cls, path: str | os.PathLike) -> "HFTokenizer":
        """`hf:DIR`: a codelm checkpoint with a Hugging Face tokenizer (its recorded roles), else a Hugging Face
        model directory."""
        path = Path(path)
        if not path.is_dir():
            raise ConfigError(f"hf:{path}: no such directory (expected a Hugging Face model directory or a codelm "
                              f"checkpoint imported from one)")
        config = read_json_if(path / HF_CONFIG)
        desc = config.get("tokenizer") if "format" in config else None
        if isinstance(desc, dict):
            if desc.get("kind") != "hf":
                raise ConfigError(f"hf:{path}: this checkpoint's tokenizer is {desc.get('name')!r}, not a Hugging "
                                  f"Face one (use --tokenizer {desc.get('name')})")
            return cls.from_checkpoint(path, desc)
        return cls.from_dir(path)

    @classmethod
    def from_dir(cls, path: str | os.PathLike, name: str | None = None) -> "HFTokenizer":
        """A Hugging Face model directory's tokenizer: tokenizer.json, with BOS/EOS/PAD from tokenizer_config.json
        (falling back to config.json / generation_config.json ids)."""
        path = Path(path)
        tj = path / HF_TOKENIZER
        if not tj.is_file():
            raise CheckpointError(f"{tj}: missing (only fast tokenizers saved as tokenizer.json are supported)")
        text = tj.read_text(encoding="utf-8")
        probe = _require_tokenizers().Tokenizer.from_str(text)
        tcfg = read_json_if(path / HF_TOKENIZER_CONFIG)
        ids = {}
        for key in ("bos", "eos", "pad"):
            token = tcfg.get(f"{key}_token")
            token = token.get("content") if isinstance(token, dict) else token
            ids[key] = probe.token_to_id(token) if token else None
            if ids[key] is None:
                for extra in (HF_GENERATION_CONFIG, HF_CONFIG):
                    value = read_json_if(path / extra).get(f"{key}_token_id")
                    value = value[0] if isinstance(value, list) and value else value
                    if isinstance(value, int):
                        ids[key] = value
                        break
        return cls(text, name=name or f"hf:{path.resolve().name}", bos_id=ids["bos"], eos_id=ids["eos"],
                   pad_id=ids["pad"])

    @classmethod
    def from_checkpoint(cls, path: Path, desc: dict) -> "HFTokenizer":
        """The tokenizer stored inside a codelm checkpoint (its tokenizer.json), verified against the config."""
        tj = Path(path) / HF_TOKENIZER
        if not tj.is_file():
            raise CheckpointError(f"{tj}: missing (this checkpoint's tokenizer is a Hugging Face tokenizer)")
        tok = cls(tj.read_text(encoding="utf-8"), name=desc.get("name", "hf"), bos_id=desc.get("bos_id"),
                  eos_id=desc.get("eos_id"), pad_id=desc.get("pad_id"))
        tok.check_same(desc, f"{tj}")
        return tok

    def with_added_tokens(self, names: list[str]) -> "HFTokenizer":
        """A copy with these special tokens appended at the next free ids (those it lacks; order kept)."""
        from tokenizers import AddedToken

        hf = _require_tokenizers().Tokenizer.from_str(self._json)
        new = [n for n in names if hf.token_to_id(n) is None]
        first = self.n_vocab
        hf.add_special_tokens([AddedToken(n, special=True, normalized=False) for n in new])
        got = [hf.token_to_id(n) for n in new]
        if got != list(range(first, first + len(new))):  # tokenizers numbers added tokens after the vocabulary
            raise ConfigError(f"tokenizer {self.name!r}: added tokens got ids {got}, expected {first}...")
        return HFTokenizer(hf.to_str(), name=self.name, bos_id=self.bos_id, eos_id=self.eot_id,
                           pad_id=self.own_pad_id)

    def to_json(self) -> str:
        return self._json

    def save_files(self, directory: Path) -> None:
        """Files a checkpoint needs to rebuild this tokenizer (save_checkpoint calls this)."""
        (Path(directory) / HF_TOKENIZER).write_text(self._json, encoding="utf-8")

    # --- encoding -----------------------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str], num_threads: int = 2) -> list[list[int]]:
        """Batched, on the tokenizers library's own thread pool (`num_threads` is tiktoken's knob; here the pool
        size is RAYON_NUM_THREADS, read once per process)."""
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def encode_bytes(self, data: bytes) -> list[int]:
        """Invalid UTF-8 is replaced (HF tokenizers take text, not bytes)."""
        return self.encode(data.decode("utf-8", errors="replace"))

    def decode(self, ids, errors: str = "replace") -> str:
        """The tokens' text, special tokens dropped. Continuation semantics, as generation needs: a SentencePiece-style
        '▁word' decodes to ' word' even as the first token (HF's decode would strip that space)."""
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    def decode_with_specials(self, ids) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def decode_bytes(self, ids) -> bytes:
        """Concatenated token bytes (specials and unknown ids dropped), so a streamed multi-byte character can be
        completed by the next token, as with tiktoken."""
        table = self._bytes
        return b"".join(table[i] for i in ids if 0 <= i < len(table))

    def token_bytes(self, i: int) -> bytes:
        return self._bytes[i]

    def is_special(self, i: int) -> bool:
        return i in self._special_ids

    @functools.cached_property
    def _special_ids(self) -> frozenset[int]:
        return frozenset(self.specials.values())

    # --- the model family's own prompts -------------------------------------------------------------------------
    @functools.cached_property
    def vocab(self) -> dict[str, int]:
        return self._tok.get_vocab(with_added_tokens=True)

    def fim_sentinel_ids(self) -> list[int]:
        """The ids of the family's FIM sentinels, in its template's order."""
        return [sentinel_id(self.vocab, s) for s in FIM_TEMPLATES[self.fim_family].sentinels]

    @functools.cached_property
    def head(self) -> list[int]:
        """The ids the tokenizer's post-processor puts before a text (its BOS handling: Llama's and DeepSeek-Coder's
        BOS, nothing for Qwen2.5-Coder and StarCoder)."""
        probe = "x = 1"
        return special_head(self._tok.encode(probe, add_special_tokens=False).ids,
                            self._tok.encode(probe, add_special_tokens=True).ids)

    def _token_bytes_table(self) -> list[bytes]:
        """Each id's bytes: byte-level BPE vocabularies are spelled through GPT-2's table; SentencePiece-style ones
        use '▁' for space and <0xNN> byte-fallback tokens. Special tokens map to b''."""
        spec = json.loads(self._json)
        decoder = json.dumps(spec.get("decoder") or {})
        inverse = {c: b for b, c in bytes_to_unicode().items()}
        byte_level = '"ByteLevel"' in decoder
        table = [b""] * self.n_vocab
        for token, i in self._tok.get_vocab(with_added_tokens=False).items():
            if i >= self.n_vocab:
                continue
            if byte_level and all(c in inverse for c in token):
                table[i] = bytes(inverse[c] for c in token)
            elif re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", token):
                table[i] = bytes([int(token[3:5], 16)])
            else:
                table[i] = token.replace("\u2581", " ").encode("utf-8")
        for i, added in self._tok.get_added_tokens_decoder().items():  # added tokens are stored as plain text
            if i < self.n_vocab:
                table[i] = b"" if added.special else added.content.encode("utf-8")
        return table

    # --- identity -----------------------------------------------------------------------------------------------
    def roles(self) -> dict[str, int | None]:
        return roles(self)

    def describe(self) -> dict:
        return {"kind": "hf", "name": self.name, "hash": self.hash, "n_vocab": self.n_vocab,
                "specials": self.specials, "bos_id": self.bos_id, "eos_id": self.eot_id, "pad_id": self.own_pad_id,
                "roles": self.roles()}

    def check_same(self, other, what: str) -> None:
        check_same(self, other, what)

    def __repr__(self) -> str:
        return f"HFTokenizer({self.name!r}, n_vocab={self.n_vocab}, hash={self.hash[:12]})"

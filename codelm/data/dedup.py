"""Exact and near-duplicate removal.

Exact: a hash of the whitespace-normalized content; the first occurrence wins.

Near (Broder 1997; as in The Stack / SlimPajama): each document becomes a set of 5-gram word shingles, summarized by a
MinHash signature (128 permutations); an LSH index (datasketch) finds candidate pairs whose estimated Jaccard
similarity is above `threshold` (default 0.8, the range SlimPajama/BigCode use), and a candidate is dropped only when
its signature's estimated Jaccard with an already-kept document really is at least the threshold (LSH banding alone
lets some lower pairs through). First occurrence wins, so the order of sources decides which copy stays.

The signature is computed with numpy rather than `datasketch.MinHash.update` (a Python call per shingle): shingles
are hashed by a polynomial over per-word crc32s, then the universal hashes (a*h + b) mod p are
vectorized over all shingles at once. Deterministic across processes (no use of Python's salted `hash`).
"""

from __future__ import annotations

import hashlib
import re
import zlib

import numpy as np

WORD = re.compile(r"\w+")
MERSENNE_61 = np.uint64((1 << 61) - 1)
MAX_HASH = np.uint64((1 << 32) - 1)


def exact_key(text: str) -> bytes:
    return hashlib.sha1(" ".join(text.split()).encode("utf-8")).digest()


class ExactDedup:
    """Drops a document whose whitespace-normalized content was already seen (first occurrence wins)."""
    name = "exact_dedup"
    parallel = False  # a sha1 is cheaper than sending the text to a worker

    def __init__(self):
        self.seen: set[bytes] = set()

    def analyze(self, doc) -> bytes:
        return exact_key(doc.text)

    def decide(self, doc, key: bytes) -> str | None:
        if key in self.seen:
            return "duplicate"
        self.seen.add(key)
        return None

    def keep(self, doc) -> str | None:
        return self.decide(doc, self.analyze(doc))


def shingle_hashes(text: str, k: int = 5) -> np.ndarray:
    """Distinct 32-bit hashes of the document's k-word shingles (a document shorter than k is one shingle)."""
    words = WORD.findall(text)
    if not words:
        return np.zeros(1, dtype=np.uint64)
    h = np.fromiter((zlib.crc32(w.encode()) for w in words), dtype=np.uint64, count=len(words))
    if len(h) < k:
        h = np.pad(h, (0, k - len(h)))
    window = np.lib.stride_tricks.sliding_window_view(h, k)
    mult = np.array([1000003 ** i % (1 << 32) for i in range(k)], dtype=np.uint64)
    combined = (window * mult).sum(axis=1) & MAX_HASH  # uint64 arithmetic wraps: a polynomial hash mod 2^64
    return np.unique(combined)


class MinHasher:
    def __init__(self, num_perm: int = 128, seed: int = 1):
        rng = np.random.RandomState(seed)
        self.num_perm = num_perm
        self.a = rng.randint(1, (1 << 61) - 1, size=num_perm, dtype=np.uint64)
        self.b = rng.randint(0, (1 << 61) - 1, size=num_perm, dtype=np.uint64)

    def signature(self, hashes: np.ndarray) -> np.ndarray:
        """min over shingles of ((a*h + b) mod p) & 2^32-1, per permutation (datasketch's scheme, vectorized).
        a*h may wrap at 2^64 — still a fixed pseudo-random permutation of h, which is all MinHash needs."""
        sig = np.full(self.num_perm, MAX_HASH, dtype=np.uint64)
        for chunk in range(0, len(hashes), 4096):  # bounds memory at num_perm x 4096
            h = hashes[chunk:chunk + 4096]
            phv = ((np.outer(h, self.a) + self.b) % MERSENNE_61) & MAX_HASH
            np.minimum(sig, phv.min(axis=0), out=sig)
        return sig


def jaccard(a: set, b: set) -> float:
    return len(a & b) / max(1, len(a | b))


class NearDedup:
    """MinHash LSH near-duplicate removal (see the module docstring)."""
    name = "near_dedup"

    def __init__(self, threshold: float = 0.8, num_perm: int = 128, shingle: int = 5):
        from datasketch import MinHashLSH
        self.threshold, self.shingle = threshold, shingle
        self.hasher = MinHasher(num_perm)
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self.kept: dict[str, np.ndarray] = {}

    def analyze(self, doc) -> np.ndarray:
        return self.hasher.signature(shingle_hashes(doc.text, self.shingle))

    def decide(self, doc, sig: np.ndarray) -> str | None:
        from datasketch import LeanMinHash
        mh = LeanMinHash(seed=1, hashvalues=sig, scheme="legacy")  # our (a*h+b) mod p is its legacy scheme
        for other in sorted(self.lsh.query(mh)):
            if np.mean(self.kept[other] == sig) >= self.threshold:
                doc.meta["near_duplicate_of"] = other
                return "near duplicate"
        key = f"{len(self.kept)}:{doc.id}"
        self.lsh.insert(key, mh)
        self.kept[key] = sig
        return None

    def keep(self, doc) -> str | None:
        return self.decide(doc, self.analyze(doc))

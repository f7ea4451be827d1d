"""Stop strings, the one place that finds and cuts them: streaming decoding (codelm.generate.TextStream),
infilling (codelm.infill) and benchmark post-processing (evals) all cut here. Plain string search, no patterns and no
torch: scoring a samples file imports it without the model's dependencies. An empty stop string never matches.

A stream must also hold back a tail that could still become a stop string. Checking every prefix of every stop
against the text's end costs O(L^2) per token (L = the shorter of the text and the stop string), which a client can
make large by sending a long stop string; `StopMatcher` keeps one Knuth-Morris-Pratt state per stop string instead,
so each new character costs O(1) amortised however long the stops and the text are.
"""

from __future__ import annotations

from typing import Sequence


def find_stop(text: str, stop: Sequence[str], start: int = 0) -> int:
    """Index of the earliest stop string in text[start:] (absolute), or -1."""
    hits = [i for i in (text.find(s, start) for s in stop if s) if i >= 0]
    return min(hits) if hits else -1


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """(the text before the earliest stop string, whether there was one)."""
    cut = find_stop(text, stop)
    return (text, False) if cut < 0 else (text[:cut], True)


def _failure(s: str) -> list[int]:
    """KMP's failure function: fail[i] = length of the longest proper border of s[:i + 1]."""
    fail = [0] * len(s)
    k = 0
    for i in range(1, len(s)):
        while k and s[i] != s[k]:
            k = fail[k - 1]
        if s[i] == s[k]:
            k += 1
        fail[i] = k
    return fail


class StopMatcher:
    """Reads text that grows at its end and reports the earliest stop string in it, and how much of its tail is a
    proper prefix of some stop string (what a stream must hold back)."""

    def __init__(self, stop: Sequence[str]):
        self.stop = [s for s in stop if s]
        self._fail = [_failure(s) for s in self.stop]
        self._state = [0] * len(self.stop)  # per stop: how many of its first characters the text now ends with
        self.read = 0                        # characters of the text read so far

    def feed(self, text: str) -> int:
        """Read text[self.read:] (the text so far must be what was fed before, plus more); returns the start of
        the earliest stop string that ends in the new part, or -1."""
        best = -1
        for j, (s, fail) in enumerate(zip(self.stop, self._fail)):
            k, m, first = self._state[j], len(s), -1
            for i in range(self.read, len(text)):
                c = text[i]
                while k and c != s[k]:
                    k = fail[k - 1]
                if c == s[k]:
                    k += 1
                if k == m:
                    if first < 0:  # this stop's first match in the new part is its earliest
                        first = i + 1 - m
                    k = fail[k - 1]
            self._state[j] = k
            if first >= 0 and (best < 0 or first < best):
                best = first
        self.read = len(text)
        return best

    def held(self) -> int:
        """Length of the longest tail of the text read that is a proper prefix of some stop string."""
        return max(self._state, default=0)


def stop_prefix_len(text: str, stop: Sequence[str]) -> int:
    """Length of the longest tail of `text` that is a proper prefix of some stop string: the text that must be held
    back from a stream because the next token could complete a stop string."""
    matcher = StopMatcher(stop)
    matcher.feed(text)
    return matcher.held()

"""Periodic progress lines for long stages: done/total, MB/s and ETA, at most one line every few seconds."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("codelm.data")


class Progress:
    def __init__(self, what: str, total_docs: int, total_bytes: int, every_s: float = 5.0):
        self.what, self.total_docs, self.total_bytes, self.every_s = what, total_docs, total_bytes, every_s
        self.docs = self.bytes = 0
        self.t0 = self.last = time.perf_counter()

    def update(self, n_bytes: int) -> None:
        self.docs += 1
        self.bytes += n_bytes
        now = time.perf_counter()
        if self.every_s and now - self.last >= self.every_s:
            self.last = now
            log.info("%s", self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = max(1e-9, (now or time.perf_counter()) - self.t0)
        rate = self.bytes / elapsed
        if not self.total_bytes:  # a streaming task does not know its total
            return (f"{self.what}: {self.docs:,} docs, {self.bytes / 1e6:.1f} MB, {self.docs / elapsed:.1f} docs/s, "
                    f"{rate / 1e6:.2f} MB/s")
        eta = (self.total_bytes - self.bytes) / rate if rate else float("inf")
        return (f"{self.what}: {self.docs:,}/{self.total_docs:,} docs, {self.bytes / 1e6:.1f}/"
                f"{self.total_bytes / 1e6:.1f} MB, {rate / 1e6:.2f} MB/s, ETA {eta:.0f}s")

"""A progress line on stderr for long runs: done/total, rate and ETA, at most every `every_s` seconds."""

import sys
import threading
import time


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    def __init__(self, label: str, total: int, unit: str = "programs", every_s: float = 10.0, stream=None):
        self.label, self.total, self.unit, self.every_s = label, total, unit, every_s
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self.start = self.last_print = time.monotonic()
        self.lock = threading.Lock()

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self.done / elapsed
        eta = format_duration((self.total - self.done) / rate) if rate > 0 else "?"
        return f"{self.label}: {self.done}/{self.total} {self.unit}, {rate:.1f}/s, ETA {eta}"

    def advance(self, count: int = 1) -> None:
        with self.lock:
            self.done += count
            now = time.monotonic()
            if now - self.last_print >= self.every_s and self.done < self.total:
                self.last_print = now
                print(self.line(), file=self.stream, flush=True)

    def finish(self) -> None:
        if self.total:
            elapsed = time.monotonic() - self.start
            print(f"{self.label}: {self.done}/{self.total} {self.unit} in {format_duration(elapsed)}",
                  file=self.stream, flush=True)

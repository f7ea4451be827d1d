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


class TaskProgress:
    """A task's side of the progress across tasks: its documents and bytes so far (and its share's bytes, when
    known), written to DIR/RANK.json at most every `every_s` seconds (atomically), read by RunProgress."""

    def __init__(self, folder, rank: int, total_bytes: int | None = None, every_s: float = 1.0):
        from pathlib import Path
        self.path = Path(folder) / f"{rank:05d}.json"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.total_bytes, self.every_s = total_bytes, every_s
        self.docs = self.bytes = 0
        self.last = time.perf_counter() - every_s  # the first document reports (its share's size is known then)

    def update(self, n_bytes: int, total_bytes: int | None = None) -> None:
        self.docs += 1
        self.bytes += n_bytes
        self.total_bytes = total_bytes if total_bytes is not None else self.total_bytes
        now = time.perf_counter()
        if now - self.last >= self.every_s:
            self.last = now
            self._write(False)

    def finish(self) -> None:
        self._write(True)

    def _write(self, done: bool) -> None:
        import json
        import os
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps({"docs": self.docs, "bytes": self.bytes, "total_bytes": self.total_bytes,
                                   "done": done}))
        tmp.replace(self.path)


class RunProgress:
    """This process' side: every `every_s` seconds, while a run's tasks work (in other processes or machines
    sharing the folder), one line over all its tasks — documents, MB, docs/s, MB/s since the run started here, and
    an ETA when the tasks know their shares' sizes (tasks not started yet are assumed as large as the others)."""

    def __init__(self, what: str, folder, tasks: int, every_s: float):
        import threading
        from pathlib import Path
        self.what, self.folder, self.tasks, self.every_s = what, Path(folder), tasks, every_s
        self.t0 = time.perf_counter()
        self.base = self._totals()  # tasks finished by an earlier, interrupted run do not count towards the rate
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name=f"progress-{what}")

    def __enter__(self):
        if self.every_s > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            line = self.line()
            if line:
                log.info("%s", line)

    def _totals(self) -> dict:
        import json
        out = {"docs": 0, "bytes": 0, "known": 0, "total": 0, "reported": 0, "done": 0}
        for p in self.folder.glob("*.json"):
            try:
                t = json.loads(p.read_text())
            except (OSError, ValueError):
                continue
            out["reported"] += 1
            out["docs"] += t["docs"]
            out["bytes"] += t["bytes"]
            out["done"] += bool(t["done"])
            if t.get("total_bytes") is not None:
                out["known"] += 1
                out["total"] += t["total_bytes"]
        return out

    def line(self, now: float | None = None) -> str:
        t = self._totals()
        if not t["reported"]:
            return ""
        elapsed = max(1e-9, (now or time.perf_counter()) - self.t0)
        docs, done_bytes = t["docs"] - self.base["docs"], t["bytes"] - self.base["bytes"]
        rate = done_bytes / elapsed
        text = (f"{self.what}: {t['docs']:,} docs, {t['bytes'] / 1e6:.1f} MB, {docs / elapsed:.1f} docs/s, "
                f"{rate / 1e6:.2f} MB/s, {t['done']}/{self.tasks} tasks done")
        if t["known"] and t["known"] == t["reported"]:
            total = t["total"] * self.tasks / t["reported"]
            eta = (total - t["bytes"]) / rate if rate > 0 else float("inf")
            text += f", {min(100.0, 100 * t['bytes'] / max(1, total)):.0f}% of {total / 1e6:.1f} MB, ETA {eta:.0f}s"
        return text

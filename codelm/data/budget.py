"""A per-document time budget: a stage that still takes too long on one document rejects it, named, instead of
stalling the run (every stage is meant to be linear in its input; this is the guard for what an audit missed).

The budget is CPU time of the process (ITIMER_PROF), not wall time: on a busy machine a starved worker would
otherwise reject documents it had barely started (seen under load: 3 files of ~10 ms each rejected at 30 s), and
what a run keeps would depend on the load. A document that is merely waiting never spends its budget; the stalls the
budget exists for (catastrophic backtracking, a quadratic loop) burn CPU.
SIGPROF interrupts Python code and the `re` engine alike (it checks for signals while matching), so the budget holds
inside a regular expression too. Signals reach only the main thread: elsewhere the budget is not enforced.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

TIMED_OUT_REASON = "time budget exceeded"

# Memory: the per-token hash memos (near dedup's shingles, decontamination's normalization) are cleared when they
# reach this many entries. Uncapped they grew with the corpus' vocabulary (475k distinct tokens in 234 MB of
# installed packages, 208k in a quarter of them: about 190 MB against 90 MB of the process), the largest thing a
# task held; at this size a memo is about 10 MB, full on any corpus, and still catches the common tokens.
TOKEN_CACHE_ENTRIES = 1 << 16


class DocumentTimeout(Exception):
    pass


def timed_out_warning(stage: str, doc_id: str, seconds: float) -> str:
    """The log line naming a document rejected for its budget (every pipeline logs the same one)."""
    return f"{stage}: {doc_id} took more than {seconds:.0f} CPU seconds; rejected"


def _raise_timeout(signum, frame):
    raise DocumentTimeout()


@contextmanager
def time_budget(seconds: float):
    """Raise DocumentTimeout in the body once it has used `seconds` of CPU time (0 = no budget)."""
    if not seconds or seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGPROF, _raise_timeout)
    signal.setitimer(signal.ITIMER_PROF, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)

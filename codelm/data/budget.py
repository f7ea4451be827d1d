"""A per-document time budget: a stage that still takes too long on one document rejects it, named, instead of
stalling the run (every stage is meant to be linear in its input; this is the guard for what an audit missed).

SIGALRM interrupts Python code and the `re` engine alike (it checks for signals while matching), so the budget holds
inside a regular expression too. Signals reach only the main thread: elsewhere the budget is not enforced.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

TIMED_OUT_REASON = "time budget exceeded"


class DocumentTimeout(Exception):
    pass


def _raise_timeout(signum, frame):
    raise DocumentTimeout()


@contextmanager
def time_budget(seconds: float):
    """Raise DocumentTimeout in the body once `seconds` of wall time have passed (0 = no budget)."""
    if not seconds or seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGALRM, _raise_timeout)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)

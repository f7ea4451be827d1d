"""The local backend, caller side: start a fork server per interpreter (by exec, scrubbed environment), send it runs.

Thread-safe: each run gets its own socketpair, so concurrent callers only share the one send of a file descriptor;
run_many waits on all its runs from one thread.
"""
import base64
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

from .result import Limits, Result, SandboxUnavailable
from . import toolchains
from .steps import Program

FORKSERVER = Path(__file__).with_name("forkserver.py")
PROJECT_ROOT = str(Path(__file__).resolve().parent.parent)
ALLOW_UNISOLATED_ENV = "CODELM_SANDBOX_ALLOW_UNISOLATED"
INFRA_RETRIES = 3
LOST_RUN_S = 60  # the supervisor enforces the time limit; waiting this much longer only guards against a lost run
# What programs see as their environment: nothing of the caller's (no tokens, no keys), threads pinned to one so that
# numpy's BLAS does not start a thread per core against the process ceiling.
SCRUBBED_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
    "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
}
# The stdlib modules HumanEval and MBPP programs import (counted over both), imported once in the server and inherited
# by every fork. Nothing heavy (numpy is imported by the programs that want it), and not `threading`: its after-fork
# hook alone doubles the pages a fork copies (~120 more copy-on-write faults per run, measured).
PREIMPORT = ["typing", "collections", "collections.abc", "math", "cmath", "re", "itertools", "functools", "string",
             "heapq", "bisect", "random", "hashlib", "copy", "operator", "array", "datetime"]
# Hidden from programs: the host's home directories and this project (the interpreter's own trees stay visible).
HIDDEN = ["/root", "/home", PROJECT_ROOT]


class ForkServer:
    def __init__(self, python: str, isolate: bool):
        self.lock = threading.Lock()
        self.sock, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # The toolchains' warm artifacts (toolchains.py) stay visible, read-only, wherever the cache lives.
        config = {"isolate": isolate, "hide": HIDDEN, "preimport": PREIMPORT, "keep": _toolchain_keep()}
        self.proc = subprocess.Popen(
            [python, "-I", str(FORKSERVER), str(child.fileno()), json.dumps(config)],
            pass_fds=[child.fileno()], env=SCRUBBED_ENV, cwd="/", stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, start_new_session=True)  # Ctrl-C in the caller is not the server's business
        child.close()
        self.sock.settimeout(120)
        try:
            hello = self.sock.recv(1 << 20)
        except OSError as e:
            hello = b""
            self.close()
            raise SandboxUnavailable(f"the sandbox fork server did not start ({e})") from None
        if not hello:
            self.close()
            raise SandboxUnavailable(f"the sandbox fork server exited at startup (code {self.proc.wait()}); "
                                     f"is {python} a working Python 3.11+?")
        self.sock.settimeout(None)
        self.hello = json.loads(hello)

    def submit(self, request: bytes) -> socket.socket:
        """Start a run; its result arrives on the returned socket (see result_of)."""
        ours, theirs = socket.socketpair()
        try:
            with self.lock:
                socket.send_fds(self.sock, [b"R"], [theirs.fileno()])
            theirs.close()
            ours.sendall(request)
            ours.shutdown(socket.SHUT_WR)
        except BaseException:
            theirs.close()
            ours.close()
            raise
        return ours

    def run(self, request: bytes, timeout_s: float) -> Result:
        with self.submit(request) as ours:
            ours.settimeout(timeout_s + LOST_RUN_S)
            chunks = []
            while chunk := ours.recv(1 << 20):
                chunks.append(chunk)
        return result_of(chunks)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        self.sock.close()  # the server exits when it sees the caller gone
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _toolchain_keep() -> list[str]:
    try:
        return [str(toolchains.cache_root())]
    except (OSError, toolchains.ToolchainError):
        return []  # compiled languages then fail with the reason when they ask for the cache; Python still runs


def result_of(chunks: list[bytes]) -> Result:
    if not chunks:
        return Result.infra_error("sandbox: the run's supervisor exited without a result")
    return Result.from_json(json.loads(b"".join(chunks)))


_servers: dict[tuple[str, bool], ForkServer] = {}
_unavailable: dict[str, SandboxUnavailable] = {}
_registry_lock = threading.Lock()


def allow_unisolated_from_env() -> bool:
    return os.environ.get(ALLOW_UNISOLATED_ENV, "") not in ("", "0", "false", "no")


def get_server(python: str | None = None, allow_unisolated: bool | None = None) -> ForkServer:
    """The running fork server for this interpreter, started (and its warnings shown) on first use."""
    python = python or sys.executable
    if allow_unisolated is None:
        allow_unisolated = allow_unisolated_from_env()
    with _registry_lock:
        for isolate in (True, False):
            server = _servers.get((python, isolate))
            if server is not None and server.alive():
                return server
        if python not in _unavailable:
            server = ForkServer(python, isolate=True)
            if server.hello["ok"]:
                return _register(python, True, server)
            server.close()
            _unavailable[python] = SandboxUnavailable(
                f"sandbox: {server.hello['error']}. Programs would run WITHOUT isolation; allow that explicitly "
                f"with allow_unisolated=True or {ALLOW_UNISOLATED_ENV}=1, or use backend='docker'.")
            warnings.warn(str(_unavailable[python]), RuntimeWarning, stacklevel=3)
        if not allow_unisolated:
            raise _unavailable[python]
        server = ForkServer(python, isolate=False)
        if not server.hello["ok"]:
            raise SandboxUnavailable(f"sandbox: even an unisolated run failed: {server.hello['error']}")
        warnings.warn("sandbox: RUNNING UNTRUSTED PROGRAMS WITHOUT ISOLATION (namespaces unavailable, allowed by "
                      "the caller)", RuntimeWarning, stacklevel=3)
        return _register(python, False, server)


def _register(python: str, isolate: bool, server: ForkServer) -> ForkServer:
    for message in server.hello.get("warnings", []):
        warnings.warn(f"sandbox: {message}", RuntimeWarning, stacklevel=4)
    _servers[(python, isolate)] = server
    return server


def shutdown() -> None:
    with _registry_lock:
        for server in _servers.values():
            server.close()
        _servers.clear()


def run(program: str | Program, *, stdin: str | None = None, files: dict[str, str | bytes] | None = None,
        python: str | None = None, allow_unisolated: bool | None = None, **limits) -> Result:
    common = {"stdin": stdin, "files": _encode_files(files), **Limits(**limits).to_json()}
    request = _request(program, common)
    return _run_with_retries(json.dumps(request).encode(), _longest(request), python, allow_unisolated)


def _request(program: str | Program, common: dict) -> dict:
    """What the fork server is sent: Python source, or a Program's steps with its files added to the common ones."""
    if isinstance(program, Program):
        return {**common, "files": {**common["files"], **_encode_files(program.files)},
                "steps": [step.to_json() for step in program.steps]}
    return {"program": program, **common}


def _longest(request: dict) -> float:
    """How long a run may take: the sum of its steps' wall limits (a step without its own has the run's)."""
    steps = request.get("steps") or [{}]
    return sum(step.get("timeout_s", request["timeout_s"]) for step in steps)


def _run_with_retries(payload: bytes, timeout_s: float, python: str | None, allow_unisolated: bool | None,
                      attempts: int = INFRA_RETRIES) -> Result:
    result = None
    for attempt in range(attempts):
        server = get_server(python, allow_unisolated)
        try:
            result = server.run(payload, timeout_s)
        except (OSError, ValueError) as e:  # the server or supervisor died under us: a fresh one next attempt
            result = Result.infra_error(f"sandbox: lost the fork server ({type(e).__name__}: {e})")
        if result.status != "infra_error":
            return result
        time.sleep(0.05 * 2 ** attempt)  # fork EAGAIN and the like are usually transient
    return result


def run_many(programs: list[str], workers: int, on_result=None, *, stdin: str | None = None,
             files: dict[str, str | bytes] | None = None, python: str | None = None,
             allow_unisolated: bool | None = None, **limits) -> list[Result]:
    """run() for each program, `workers` at a time, from this one thread: waiting on the runs' sockets with poll
    costs the caller less CPU than a thread per run (futures, locks, GIL hand-offs). A run that ends in infra_error
    is run again the way run() does it, with retries."""
    common = {"stdin": stdin, "files": _encode_files(files), **Limits(**limits).to_json()}
    results: list[Result | None] = [None] * len(programs)
    flights: dict[int, _Flight] = {}  # by socket fd
    poller = select.poll()
    todo = iter(range(len(programs)))

    def finish(flight: _Flight, result: Result) -> None:
        if result.status == "infra_error":
            result = _run_with_retries(flight.payload, flight.timeout_s, python, allow_unisolated, INFRA_RETRIES - 1)
        results[flight.index] = result
        if on_result is not None:
            on_result(flight.index, result)

    def start_next() -> bool:
        i = next(todo, None)
        if i is None:
            return False
        request = _request(programs[i], common)
        flight = _Flight(i, json.dumps(request).encode(), _longest(request))
        try:
            flight.sock = get_server(python, allow_unisolated).submit(flight.payload)
        except OSError as e:
            finish(flight, Result.infra_error(f"sandbox: lost the fork server ({type(e).__name__}: {e})"))
            return True
        flight.sock.setblocking(False)
        flights[flight.sock.fileno()] = flight
        poller.register(flight.sock, select.POLLIN)
        return True

    def fill() -> None:
        while len(flights) < workers and start_next():
            pass

    fill()
    while flights:
        wait_ms = max(0.0, min(f.deadline for f in flights.values()) - time.monotonic()) * 1000
        events = poller.poll(wait_ms + 1)
        done = [flights[fd] for fd, _ in events if flights[fd].receive()]
        now = time.monotonic()
        done += [f for f in flights.values() if f not in done and now > f.deadline]
        for flight in done:
            del flights[flight.sock.fileno()]
            poller.unregister(flight.sock)
            flight.sock.close()
            finish(flight, flight.result())
            fill()
    return results


class _Flight:
    """One of run_many's runs in progress."""

    def __init__(self, index: int, payload: bytes, timeout_s: float):
        self.index, self.payload, self.timeout_s = index, payload, timeout_s
        self.deadline = time.monotonic() + timeout_s + LOST_RUN_S
        self.chunks: list[bytes] = []
        self.complete = False
        self.sock: socket.socket | None = None

    def receive(self) -> bool:
        """Read what has arrived; True once the supervisor has closed its end (or the connection broke)."""
        try:
            while chunk := self.sock.recv(1 << 20):
                self.chunks.append(chunk)
        except BlockingIOError:
            return False
        except OSError:
            self.chunks = []  # a broken connection: no result
        self.complete = True
        return True

    def result(self) -> Result:
        if not self.complete:
            return Result.infra_error("sandbox: no result from the run's supervisor in time")
        try:
            return result_of(self.chunks)
        except ValueError as e:  # as run() treats it: the supervisor died mid-answer
            return Result.infra_error(f"sandbox: unreadable result from the run's supervisor ({e})")


def _encode_files(files: dict[str, str | bytes] | None) -> dict:
    encoded = {}
    for name, content in (files or {}).items():
        if isinstance(content, bytes):
            encoded[name] = {"b64": base64.b64encode(content).decode()}
        else:
            encoded[name] = {"text": content}
    return encoded

"""The local backend, caller side: start a fork server per interpreter (by exec, scrubbed environment), send it runs.

Thread-safe: each run gets its own socketpair, so run_many's threads only share the one send of a file descriptor.
"""
import base64
import json
import os
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

from .result import Limits, Result, SandboxUnavailable

FORKSERVER = Path(__file__).with_name("forkserver.py")
PROJECT_ROOT = str(Path(__file__).resolve().parent.parent)
ALLOW_UNISOLATED_ENV = "CODELM_SANDBOX_ALLOW_UNISOLATED"
INFRA_RETRIES = 3
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
        config = {"isolate": isolate, "hide": HIDDEN, "preimport": PREIMPORT}
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

    def run(self, request: bytes, timeout_s: float) -> Result:
        ours, theirs = socket.socketpair()
        with ours:
            with self.lock:
                socket.send_fds(self.sock, [b"R"], [theirs.fileno()])
            theirs.close()
            ours.sendall(request)
            ours.shutdown(socket.SHUT_WR)
            ours.settimeout(timeout_s + 60)  # the supervisor enforces the limit; this only guards against a lost one
            chunks = []
            while chunk := ours.recv(1 << 20):
                chunks.append(chunk)
        if not chunks:
            return Result.infra_error("sandbox: the run's supervisor exited without a result")
        return Result.from_json(json.loads(b"".join(chunks)))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        self.sock.close()  # the server exits when it sees the caller gone
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


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


def run(program: str, *, stdin: str | None = None, files: dict[str, str | bytes] | None = None,
        python: str | None = None, allow_unisolated: bool | None = None, **limits) -> Result:
    request = {"program": program, "stdin": stdin, "files": _encode_files(files), **Limits(**limits).to_json()}
    payload = json.dumps(request).encode()
    result = None
    for attempt in range(INFRA_RETRIES):
        server = get_server(python, allow_unisolated)
        try:
            result = server.run(payload, request["timeout_s"])
        except (OSError, ValueError) as e:  # the server or supervisor died under us: a fresh one next attempt
            result = Result.infra_error(f"sandbox: lost the fork server ({type(e).__name__}: {e})")
        if result.status != "infra_error":
            return result
        time.sleep(0.05 * 2 ** attempt)  # fork EAGAIN and the like are usually transient
    return result


def _encode_files(files: dict[str, str | bytes] | None) -> dict:
    encoded = {}
    for name, content in (files or {}).items():
        if isinstance(content, bytes):
            encoded[name] = {"b64": base64.b64encode(content).decode()}
        else:
            encoded[name] = {"text": content}
    return encoded

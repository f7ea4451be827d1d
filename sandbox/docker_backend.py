"""The docker backend: a pool of warm containers of the sandbox image (the Dockerfile's `sandbox` stage).

Each container: network_mode none, read-only root, tmpfs /work (cwd) and /tmp, cap_drop ALL, no-new-privileges,
memory and pids limits, running as nobody. A program is one `docker exec` of container_runner.py (its source is
passed on the command line, so the image needs only python3), which runs it in its own process group, then kills
everything the program started and wipes the tmpfs. A container whose program timed out, or whose runner failed, is
replaced. Slower than the local backend (an exec round trip per program) but needs no namespaces on the host.
"""
import json
import os
import queue
import socket
import threading
from pathlib import Path

from .result import Limits, Result, SandboxUnavailable

IMAGE = os.environ.get("CODELM_SANDBOX_IMAGE", "codelm-sandbox:latest")
RUNNER = Path(__file__).with_name("container_runner.py").read_text()
LABEL = "codelm.sandbox"
NOBODY = "65534:65534"
ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/work", "LANG": "C.UTF-8",
       "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
INFRA_RETRIES = 3
BUILD_HINT = ("build it with `docker build --target sandbox -t codelm-sandbox:latest .` "
              "(or run .ci/docker_setup.sh), or set CODELM_SANDBOX_IMAGE")

_client = None
_client_lock = threading.Lock()
_pools: dict[tuple, "Pool"] = {}


def client():
    """The docker client, or SandboxUnavailable in one line when no engine (or no image) is reachable."""
    global _client
    with _client_lock:
        if _client is None:
            try:
                import docker
            except ImportError:
                raise SandboxUnavailable("sandbox: the docker backend needs the `docker` package") from None
            try:
                c = docker.from_env(timeout=30)
                c.ping()
            except Exception as e:
                raise SandboxUnavailable(f"sandbox: no Docker engine reachable ({type(e).__name__}: "
                                         f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None
            try:
                c.images.get(IMAGE)
            except Exception:
                raise SandboxUnavailable(f"sandbox: Docker image {IMAGE} not found; {BUILD_HINT}") from None
            _client = c
        return _client


class Pool:
    """Warm containers for one set of container-level limits (memory, processes); grows to `size` on demand."""

    def __init__(self, memory_mb: int, max_processes: int, size: int):
        self.memory_mb, self.max_processes, self.size = memory_mb, max_processes, size
        self.idle: queue.Queue = queue.Queue()
        self.count = 0
        self.lock = threading.Lock()

    def acquire(self):
        with self.lock:
            grow = self.idle.empty() and self.count < self.size
            if grow:
                self.count += 1
        if grow:
            try:
                return self._start()
            except Exception:
                with self.lock:
                    self.count -= 1
                raise
        return self.idle.get()

    def release(self, container, healthy: bool) -> None:
        if healthy:
            self.idle.put(container)
            return
        threading.Thread(target=_remove, args=(container,), daemon=True).start()
        try:
            self.idle.put(self._start())
        except Exception:
            with self.lock:
                self.count -= 1

    def _start(self):
        tmpfs_opts = f"size={self.memory_mb}m,mode=1777,nosuid,nodev"
        return client().containers.run(
            IMAGE, ["sleep", "infinity"], detach=True, user=NOBODY, network_mode="none", read_only=True,
            tmpfs={"/work": tmpfs_opts, "/tmp": tmpfs_opts}, working_dir="/work", cap_drop=["ALL"],
            security_opt=["no-new-privileges"], mem_limit=f"{self.memory_mb}m", memswap_limit=f"{self.memory_mb}m",
            pids_limit=self.max_processes, environment=ENV, labels={LABEL: str(os.getpid())}, init=False)


def _remove(container) -> None:
    try:
        container.remove(force=True)
    except Exception:
        pass


def _exec(container, payload: bytes, timeout_s: float) -> dict:
    api = client().api
    exec_id = api.exec_create(container.id, ["python3", "-I", "-c", RUNNER], stdin=True, user=NOBODY,
                              workdir="/work", environment=ENV)["Id"]
    sock = api.exec_start(exec_id, socket=True)
    raw = sock._sock
    raw.settimeout(timeout_s + 30)  # the runner enforces the limit; this only guards against a lost container
    try:
        raw.sendall(payload)
        raw.shutdown(socket.SHUT_WR)
        stdout, stderr = _read_frames(raw)
    finally:
        sock.close()
    if not stdout:
        raise RuntimeError(f"container runner gave no result: {stderr[-500:].decode(errors='replace')}")
    return json.loads(stdout)


def _read_frames(raw: socket.socket) -> tuple[bytes, bytes]:
    """Docker's multiplexed exec stream: 8-byte headers (stream id, size) before each chunk."""
    data = bytearray()
    while chunk := raw.recv(1 << 16):
        data += chunk
    streams = {1: bytearray(), 2: bytearray()}
    i = 0
    while i + 8 <= len(data):
        stream, size = data[i], int.from_bytes(data[i + 4:i + 8], "big")
        streams.setdefault(stream, bytearray()).extend(data[i + 8:i + 8 + size])
        i += 8 + size
    return bytes(streams[1]), bytes(streams[2])


def pool_for(limits: Limits) -> Pool:
    key = (limits.memory_mb, limits.max_processes)
    with _client_lock:
        if key not in _pools:
            _pools[key] = Pool(limits.memory_mb, limits.max_processes, size=2 * (os.cpu_count() or 1))
        return _pools[key]


def run(program: str, *, stdin: str | None = None, files: dict[str, str | bytes] | None = None, **limits) -> Result:
    from .local import _encode_files  # same wire format for files
    limits.pop("python", None)
    limits.pop("allow_unisolated", None)
    lim = Limits(**limits)
    client()
    payload = json.dumps({"program": program, "stdin": stdin, "files": _encode_files(files),
                          **lim.to_json()}).encode()
    pool = pool_for(lim)
    result = Result.infra_error("sandbox: docker run never attempted")
    for _attempt in range(INFRA_RETRIES):
        try:
            container = pool.acquire()
        except Exception as e:
            result = Result.infra_error(f"sandbox: could not start a container: {e}")
            continue
        dirty = True
        try:
            reply = _exec(container, payload, lim.timeout_s)
            dirty = reply.pop("dirty", True)
            result = Result.from_json(reply)
        except Exception as e:
            result = Result.infra_error(f"sandbox: container error: {type(e).__name__}: {e}")
        # A timed-out container may still hold stuck processes; a failed one is suspect; a dirty one kept something
        # of its program: replace them all.
        pool.release(container, healthy=not dirty and result.status not in ("timeout", "infra_error", "memory"))
        if result.status != "infra_error":
            return result
    return result


def shutdown() -> None:
    """Remove this process's containers (also registered at exit)."""
    with _client_lock:
        pools = list(_pools.values())
        _pools.clear()
    for pool in pools:
        while not pool.idle.empty():
            _remove(pool.idle.get_nowait())


import atexit  # noqa: E402

atexit.register(shutdown)

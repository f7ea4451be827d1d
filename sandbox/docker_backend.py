"""The docker backend: a pool of warm containers of the sandbox image (the Dockerfile's `sandbox` stage).

Each container: network_mode none, read-only root, tmpfs /work (cwd) and /tmp, cap_drop ALL, no-new-privileges,
memory and pids limits, running as nobody. Its PID 1 is container_runner.py (its source is the container's command, so
the image needs only python3), serving one program after another over the container's attached stdin/stdout: a
program is one JSON line each way on a socket kept open, with no `docker exec` per program. The runner kills
everything the program started and wipes the tmpfs after each. A container whose program timed out, whose runner
failed, or that was left dirty is replaced. Slower than the local backend but needs no namespaces on the host.

Programs in other languages (steps.py) run in the `sandbox-lang` image (LANG_IMAGE), whose toolchains and warm
artifacts are its own, read-only like the rest of its root (toolchains.build_image): the steps come from the
Program's recipe, for the image. The steps are sent one by one to the same container, and before each the container's
memory and process limits are set to the step's (`docker update`, ~15 ms): a compiler gets its 2 GB, the program it
built only what the run allows, as on the local backend. Build outputs stay in the container's tmpfs between the
steps (sized for the largest step, charged to its memory) and are wiped after the last.
"""
import json
import os
import queue
import threading
from pathlib import Path

from .result import Limits, Result, SandboxUnavailable
from .steps import STEP_LIMITS, Program

IMAGE = os.environ.get("CODELM_SANDBOX_IMAGE", "codelm-sandbox:latest")
LANG_IMAGE = os.environ.get("CODELM_SANDBOX_LANG_IMAGE", "codelm-sandbox-lang:latest")
RUNNER = Path(__file__).with_name("container_runner.py").read_text()
LABEL = "codelm.sandbox"
NOBODY = "65534:65534"
ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/work", "LANG": "C.UTF-8",
       "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
INFRA_RETRIES = 3
BUILD_HINT = ("build it with `docker build --target sandbox -t codelm-sandbox:latest .` "
              "(or run .ci/docker_setup.sh), or set CODELM_SANDBOX_IMAGE")
LANG_BUILD_HINT = ("build it with `docker build --network host --target sandbox-lang -t codelm-sandbox-lang:latest .` "
                   "(offline: .ci/docker_setup.sh --lang), or set CODELM_SANDBOX_LANG_IMAGE")

_client = None
_client_lock = threading.Lock()
_pools: dict[tuple, "Pool"] = {}
_images: set[str] = set()


def client(image: str = IMAGE):
    """The docker client, or SandboxUnavailable in one line when no engine (or no `image`) is reachable."""
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
            _client = c
        if image not in _images:
            try:
                _client.images.get(image)
            except Exception:
                hint = LANG_BUILD_HINT if image == LANG_IMAGE else BUILD_HINT
                raise SandboxUnavailable(f"sandbox: Docker image {image} not found; {hint}") from None
            _images.add(image)
        return _client


class Pool:
    """Warm containers for one set of container-level limits (memory, processes); grows to `size` on demand."""

    def __init__(self, image: str, memory_mb: int, max_processes: int, size: int):
        self.image, self.memory_mb, self.max_processes, self.size = image, memory_mb, max_processes, size
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
        threading.Thread(target=container.remove, daemon=True).start()
        try:
            self.idle.put(self._start())
        except Exception:
            with self.lock:
                self.count -= 1

    def _start(self) -> "Warm":
        tmpfs_opts = f"size={self.memory_mb}m,mode=1777,nosuid,nodev"
        # Docker mounts a tmpfs noexec unless told otherwise: compiled programs run what their build step wrote
        work_opts = tmpfs_opts + (",exec" if self.image == LANG_IMAGE else "")
        container = client(self.image).containers.run(
            self.image, ["python3", "-I", "-c", RUNNER], detach=True, stdin_open=True, user=NOBODY, network_mode="none",
            read_only=True, tmpfs={"/work": work_opts, "/tmp": tmpfs_opts}, working_dir="/work", cap_drop=["ALL"],
            security_opt=["no-new-privileges"], mem_limit=f"{self.memory_mb}m", memswap_limit=f"{self.memory_mb}m",
            pids_limit=self.max_processes, environment=ENV, labels={LABEL: str(os.getpid())}, init=False)
        try:
            return Warm(container, (self.memory_mb, self.max_processes))
        except Exception:
            _remove(container)
            raise


class Warm:
    """A running sandbox container and the stream to its runner, attached once."""

    def __init__(self, container, limits: tuple[int, int]):
        self.container = container
        self.limits = limits  # (memory MB, processes) the container has now
        self.sock = client().api.attach_socket(container.id, params={"stdin": 1, "stdout": 1, "stderr": 1,
                                                                     "stream": 1})
        self.raw = self.sock._sock
        self.frames = Frames()

    def run(self, payload: bytes, timeout_s: float) -> dict:
        # The runner enforces the limit; this only guards against a lost container.
        self.raw.settimeout(timeout_s + 30)
        self.raw.sendall(payload + b"\n")
        while b"\n" not in self.frames.stdout:
            chunk = self.raw.recv(1 << 16)
            if not chunk:
                stderr = self.frames.stderr[-500:].decode(errors="replace")
                raise RuntimeError(f"container runner gave no result: {stderr}")
            self.frames.feed(chunk)
        line, _, rest = bytes(self.frames.stdout).partition(b"\n")
        self.frames.stdout = bytearray(rest)
        return json.loads(line)

    def set_limits(self, memory_mb: int, max_processes: int) -> None:
        """The container's cgroup limits for the next step; one API call, only when they change."""
        if (memory_mb, max_processes) == self.limits:
            return
        api = client().api
        reply = api._post_json(api._url("/containers/{0}/update", self.container.id),
                               data={"Memory": memory_mb << 20, "MemorySwap": memory_mb << 20,
                                     "PidsLimit": max_processes})
        api._raise_for_status(reply)
        self.limits = (memory_mb, max_processes)

    def remove(self) -> None:
        try:
            self.sock.close()
        except Exception:
            pass
        _remove(self.container)


def _remove(container) -> None:
    try:
        container.remove(force=True)
    except Exception:
        pass


class Frames:
    """Docker's multiplexed attach stream (no TTY): 8-byte headers (stream id, size) before each chunk."""

    def __init__(self):
        self.pending = bytearray()
        self.stdout, self.stderr = bytearray(), bytearray()

    def feed(self, data: bytes) -> None:
        self.pending += data
        while len(self.pending) >= 8:
            stream, size = self.pending[0], int.from_bytes(self.pending[4:8], "big")
            if len(self.pending) < 8 + size:
                return
            (self.stdout if stream == 1 else self.stderr).extend(self.pending[8:8 + size])
            del self.pending[:8 + size]


def pool_for(limits: Limits, image: str = IMAGE) -> Pool:
    key = (image, limits.memory_mb, limits.max_processes)
    with _client_lock:
        if key not in _pools:
            _pools[key] = Pool(image, limits.memory_mb, limits.max_processes, size=2 * (os.cpu_count() or 1))
        return _pools[key]


def run(program: "str | Program", *, stdin: str | None = None, files: dict[str, str | bytes] | None = None,
        **limits) -> Result:
    from .local import _encode_files  # same wire format for files
    limits.pop("python", None)
    limits.pop("allow_unisolated", None)
    lim = Limits(**limits)
    if isinstance(program, Program):
        return run_program(program, stdin, {**_encode_files(files), **_encode_files(program.files)}, lim)
    client()
    payload = json.dumps({"program": program, "stdin": stdin, "files": _encode_files(files),
                          **lim.to_json()}).encode()

    def one_run(container) -> tuple[Result, bool]:
        reply = container.run(payload, lim.timeout_s)
        dirty = reply.pop("dirty", True)
        return Result.from_json(reply), dirty

    return _with_container(pool_for(lim), one_run)


def _with_container(pool, attempt) -> Result:
    """`attempt(container) -> (result, dirty)` in a container of the pool, retried on infrastructure errors. A
    timed-out container may still hold stuck processes; a failed one is suspect; a dirty one kept something of its
    program: all are replaced instead of going back to the pool."""
    result = Result.infra_error("sandbox: docker run never attempted")
    for _attempt in range(INFRA_RETRIES):
        try:
            container = pool.acquire()
        except Exception as e:
            result = Result.infra_error(f"sandbox: could not start a container: {e}")
            continue
        dirty = True
        try:
            result, dirty = attempt(container)
        except Exception as e:
            result = Result.infra_error(f"sandbox: container error: {type(e).__name__}: {e}")
        pool.release(container, healthy=not dirty and result.status not in ("timeout", "infra_error", "memory"))
        if result.status != "infra_error":
            return result
    return result


def run_program(program: Program, stdin: str | None, files: dict, lim: Limits) -> Result:
    """A Program's steps, one after another in one container of LANG_IMAGE, each under its own limits."""
    if program.recipe is not None:
        from . import toolchains
        program = toolchains.program(**program.recipe, image=True)  # the image's toolchains, not the caller's
    client(LANG_IMAGE)
    base = lim.to_json()
    steps = []
    for i, step in enumerate(program.steps):
        own = {k: v for k, v in step.to_json().items() if k in STEP_LIMITS and k != "address_space_mb"}
        request = {**base, **own, "argv": step.argv, "env": step.env, "stdin": None, "files": None,
                   "keep": i < len(program.steps) - 1}
        steps.append((step.name, request))
    steps[0][1]["files"] = files
    steps[-1][1]["stdin"] = stdin  # only the last step reads stdin, as on the local backend
    # the container's tmpfs (and so its pool) is sized for the largest step; each step then gets its own limits
    largest = Limits(**{**base, "memory_mb": max(r["memory_mb"] for _, r in steps),
                        "max_processes": max(r["max_processes"] for _, r in steps)})

    def all_steps(container) -> tuple[Result, bool]:
        for name, request in steps:
            container.set_limits(request["memory_mb"], request["max_processes"])
            reply = container.run(json.dumps(request).encode(), request["timeout_s"])
            dirty = reply.pop("dirty", True)
            result = Result.from_json(reply)
            result.step = name
            if result.status != "ok":
                break
        return result, dirty

    return _with_container(pool_for(largest, LANG_IMAGE), all_steps)


def shutdown() -> None:
    """Remove this process's containers (also registered at exit)."""
    with _client_lock:
        pools = list(_pools.values())
        _pools.clear()
    for pool in pools:
        while not pool.idle.empty():
            pool.idle.get_nowait().remove()


import atexit  # noqa: E402

atexit.register(shutdown)

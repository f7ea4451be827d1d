"""The local backend's fork server. Started by exec (see local.py) with a scrubbed environment; single-threaded.

    caller --(SOCK_SEQPACKET: one fd per run)--> server --clone--> init (PID 1 of the run) --fork--> program

The caller sends, per run, one end of a fresh socketpair carrying the request and, later, the result. The server is
also every run's supervisor: one poll loop over all runs' pipes, times their walls, caps their output, reads and
removes their cgroups. It stays outside the runs' namespaces to do so. Each run's init is PID 1 of the run's PID
namespace, so when it exits the kernel kills every process the program started (daemons, setsid double-forks,
orphans). Two forks per run, and nothing else that costs an interpreter start: a fork is ~1 ms here, and the
supervisor-per-run design this replaced spent a third of its time forking supervisors.
Stdlib only: run as `python -I forkserver.py FD CONFIG_JSON`, with this directory as sys.path[0].
"""
import base64
import gc
import json
import os
import resource
import select
import shutil
import signal
import socket
import sys
import tempfile
import time

# -I (isolated mode) leaves the script's directory off sys.path; the helper modules beside this file are needed.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cgroups  # noqa: E402
import isolation  # noqa: E402
import program  # noqa: E402
import syscalls as sc  # noqa: E402

READ_CHUNK = 1 << 16
KILL_GRACE_S = 5.0  # after SIGKILL of the run's init, pipes close within milliseconds; this only bounds a stuck run


class Server:
    def __init__(self, sock: socket.socket, config: dict):
        self.sock = sock
        self.config = config
        self.isolate = config["isolate"]
        self.run_uid = os.geteuid() == 0  # root: every run gets a host uid of its own
        self.user_namespace = self.isolate
        self.cgroups = None
        self.features: dict = {"isolated": self.isolate, "uid": "per-run" if self.run_uid else "caller's"}
        self.warnings: list[str] = []
        self.poller = select.poll()
        self.fd_runs: dict[int, Run] = {}
        self.runs: set[Run] = set()
        self.next_run = 0

    # -- setup ---------------------------------------------------------------------------------------------------
    def setup(self) -> dict:
        if self.isolate:
            try:
                isolation.isolate_server(self.config["hide"], self._kept_paths())
            except OSError as e:
                return {"ok": False, "error": f"cannot create namespaces ({e}); this host forbids them"}
            self.features.update(network="empty network namespace", hidden=self.config["hide"])
        self.cgroups, why = cgroups.create(f"codelm-sandbox-{os.getpid()}")
        if self.cgroups is None:
            self.warnings.append(f"no cgroups ({why}): memory falls back to RLIMIT_AS and processes to RLIMIT_NPROC")
        self.features["cgroups"] = f"v{self.cgroups.version}" if self.cgroups else None
        sys.dont_write_bytecode = True
        for name in self.config.get("preimport", []):
            try:
                __import__(name)
            except ImportError:
                pass
        # Keep the collector off the inherited objects, so forks do not copy-on-write pages just to scan them.
        gc.freeze()
        return self._probe()

    def _kept_paths(self) -> list[str]:
        """The interpreter's own trees stay visible even under a hidden directory (a venv inside the project)."""
        keep = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable))}
        keep.update(p for p in sys.path if p.endswith(("site-packages", "dist-packages")))
        return sorted(keep)

    def _probe(self) -> dict:
        """Run one trivial program through the whole path; drop the user namespace if the host forbids that step."""
        for attempt in range(2):
            result = self._run_inline({"program": "pass"})
            if result["status"] == "ok":
                self.features["user_namespace"] = self.user_namespace
                self.features["pid_mount_ipc_uts_namespaces"] = self.isolate
                return {"ok": True, "features": self.features, "warnings": self.warnings}
            if attempt == 0 and self.user_namespace and "user namespace" in result["stderr"]:
                self.user_namespace = False
                self.warnings.append(f"per-run user namespace unavailable ({result['stderr'].strip()}); "
                                     "runs still get their own host uid")
                continue
            break
        return {"ok": False, "error": f"a trivial program failed in the sandbox: {result['stderr'].strip()}"}

    def _run_inline(self, request: dict) -> dict:
        ours, theirs = socket.socketpair()
        ours.sendall(json.dumps(request).encode())
        ours.shutdown(socket.SHUT_WR)
        self.start_run(theirs)
        while self.runs:
            self.step()
        return json.loads(_read_all(ours))

    # -- serving -------------------------------------------------------------------------------------------------
    def serve(self) -> None:
        self.poller.register(self.sock, select.POLLIN)
        try:
            while True:
                for fd, _ in self.step():
                    msg, fds, _, _ = socket.recv_fds(self.sock, 16, 1)
                    if not msg:
                        return  # the caller is gone
                    self.start_run(socket.socket(fileno=fds[0]))
        finally:
            for run in list(self.runs):
                run.kill("infra_error")
            if self.cgroups:
                self.cgroups.remove()

    def step(self) -> list:
        """Wait for output, exits or deadlines of the runs; returns the events on the server socket."""
        now = time.monotonic()
        wait = min((run.next_deadline() for run in self.runs), default=now + 1.0) - now
        ours = []
        for fd, _ in self.poller.poll(max(0.0, wait) * 1000 + 1):
            run = self.fd_runs.get(fd)
            if run is None:
                ours.append((fd, _))
            else:
                run.on_readable(fd)
        now = time.monotonic()
        for run in list(self.runs):
            run.check_deadline(now)
            if run.done():
                self.finish(run)
        return ours

    def start_run(self, conn: socket.socket) -> None:
        try:
            req = json.loads(_read_all(conn))
            run = Run(self, conn, req)
        except Exception as e:  # anything here is the sandbox's fault, never the program's
            _send(conn, infra_error(f"sandbox: could not start the run: {type(e).__name__}: {e}"))
            return
        self.runs.add(run)
        for fd in run.fds():
            self.fd_runs[fd] = run
            self.poller.register(fd, select.POLLIN)

    def forget_fd(self, fd: int) -> None:
        self.poller.unregister(fd)
        del self.fd_runs[fd]
        os.close(fd)

    def finish(self, run: "Run") -> None:
        self.runs.discard(run)
        for fd in run.fds():
            self.forget_fd(fd)
        try:
            result = run.result()
        except Exception as e:
            result = infra_error(f"sandbox: {type(e).__name__}: {e}")
        _send(run.conn, result)


class Run:
    """One program from fork to verdict; its file descriptors are polled by the server."""

    def __init__(self, server: Server, conn: socket.socket, req: dict):
        self.server, self.conn, self.req = server, conn, req
        self.limits = Limits(req)
        server.next_run += 1
        self.cgroup = None
        if server.cgroups:
            self.cgroup = server.cgroups.new_run(f"run-{server.next_run}", self.limits.memory_mb << 20,
                                                 self.limits.max_processes)
        self.out, self.err, self.status = bytearray(), bytearray(), bytearray()
        self.reason = None  # "timeout" or "output_limit" when we killed the run
        self.program_pid = self.wait_status = self.init_error = self.usage = None
        self.killed_at = None
        try:
            self._spawn()
        except BaseException:
            if self.cgroup:
                self.cgroup.remove()
            raise

    def _spawn(self) -> None:
        server, limits = self.server, self.limits
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        status_r, status_w = os.pipe()
        stdin_fd = _stdin_fd(self.req.get("stdin"))
        workdir = isolation.WORKDIR if server.isolate else tempfile.mkdtemp(prefix="codelm-sandbox-")
        self.workdir = workdir
        # Host uids are free for the taking: one per run (counting from RUN_UID_BASE), so no two runs share a uid.
        run_uid = isolation.RUN_UID_BASE + server.next_run % 1_000_000 if server.run_uid else None
        if not server.isolate and run_uid is not None:
            os.chown(workdir, run_uid, run_uid)
        self.start = time.monotonic()
        if server.isolate:
            pid = sc.fork_into(sc.CLONE_NEWPID | sc.CLONE_NEWNS | sc.CLONE_NEWIPC | sc.CLONE_NEWUTS)
        else:
            pid = os.fork()
        if pid == 0:
            try:
                for fd in (out_r, err_r, status_r):
                    os.close(fd)
                init_process(self.req["program"], self.req.get("files") or {}, limits, self.cgroup, run_uid,
                             server.isolate and server.user_namespace, workdir, stdin_fd, out_w, err_w, status_w)
            except BaseException as e:
                os.write(status_w, f"E{type(e).__name__}: {e}\n".encode())
            finally:
                os._exit(0)
        self.init_pid = pid
        for fd in (out_w, err_w, status_w, stdin_fd):
            os.close(fd)
        self.pidfd = os.pidfd_open(pid)  # readable when init exits: no SIGCHLD handling, no blocking wait
        self.pipes = {out_r: self.out, err_r: self.err, status_r: self.status}
        self.status_fd = status_r
        self.deadline = self.start + limits.timeout_s

    def fds(self) -> list[int]:
        return list(self.pipes) + ([self.pidfd] if self.pidfd is not None else [])

    def on_readable(self, fd: int) -> None:
        if fd == self.pidfd:
            _, _, self.usage = os.wait4(self.init_pid, 0)
            self.server.forget_fd(fd)
            self.pidfd = None
            return
        data = os.read(fd, READ_CHUNK)
        if not data:
            del self.pipes[fd]
            self.server.forget_fd(fd)
            return
        self.pipes[fd] += data
        if fd == self.status_fd:
            self._parse_status()
        elif self.killed_at is None and len(self.out) + len(self.err) > self.limits.max_output_bytes:
            self.kill("output_limit")

    def _parse_status(self) -> None:
        for line in bytes(self.status).decode().splitlines():
            kind, value = line[:1], line[1:]
            if kind == "P":
                self.program_pid = int(value)
            elif kind == "S" and self.wait_status is None:
                self.wait_status = int(value)
                self.end = time.monotonic()
            elif kind == "E":
                self.init_error = value

    def next_deadline(self) -> float:
        return self.deadline if self.killed_at is None else self.killed_at + KILL_GRACE_S

    def check_deadline(self, now: float) -> None:
        if self.killed_at is None and now >= self.deadline and self.wait_status is None:
            self.kill("timeout")
        elif self.killed_at is not None and now > self.killed_at + KILL_GRACE_S:
            for fd in list(self.pipes):  # a stuck run: give up on its pipes rather than on the server
                del self.pipes[fd]
                self.server.forget_fd(fd)

    def kill(self, reason: str) -> None:
        self.reason = reason
        self.killed_at = self.end = time.monotonic()
        try:
            os.kill(self.init_pid, signal.SIGKILL)  # PID 1 of the run: the kernel kills the rest of its namespace
        except ProcessLookupError:
            pass
        if self.program_pid and not self.server.isolate:
            _kill_group(self.program_pid)  # without a PID namespace, its process group is what we can reach

    def done(self) -> bool:
        return not self.pipes and self.pidfd is None

    def result(self) -> dict:
        try:
            if self.program_pid and not self.server.isolate:
                _kill_group(self.program_pid)
                shutil.rmtree(self.workdir, ignore_errors=True)
            cpu = self.usage.ru_utime + self.usage.ru_stime if self.usage else 0.0
            oom = self.cgroup.oom_kills() if self.cgroup else 0
            if not hasattr(self, "end"):
                self.end = time.monotonic()
            return verdict(self, self.limits, cpu, oom)
        finally:
            if self.cgroup:
                self.cgroup.remove()


class Limits:
    def __init__(self, req: dict):
        self.timeout_s = float(req.get("timeout_s", 10.0))
        cpu = req.get("cpu_s")
        self.cpu_s = float(cpu) if cpu is not None else self.timeout_s
        self.memory_mb = int(req.get("memory_mb", 1024))
        self.max_output_bytes = int(req.get("max_output_bytes", 1 << 20))
        self.max_processes = int(req.get("max_processes", 128))
        self.max_file_mb = int(req.get("max_file_mb", 64))
        self.max_open_files = int(req.get("max_open_files", 256))


def init_process(source, files, limits, cgroup, run_uid, user_namespace, workdir, stdin_fd, out_w, err_w,
                 status_w) -> None:
    """PID 1 of the run (already in its new namespaces): finish isolating, drop privileges, fork the program, wait
    for it, report its status, exit."""
    if cgroup:
        cgroup.join()
    if workdir == isolation.WORKDIR:
        isolation.enter_run_namespaces(tmp_mb=limits.memory_mb)
    try:
        isolation.drop_privileges(run_uid, user_namespace=user_namespace)
    except OSError as e:
        raise OSError(e.errno, f"user namespace: {e}") from None
    sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)  # after the uid change, which clears it; dies with the supervisor
    _write_files(files, workdir)
    _set_rlimits(limits, cgroup is None)
    pid = os.fork()
    if pid == 0:
        os.close(status_w)
        program.run_program(source, stdin_fd, out_w, err_w, workdir)
    os.write(status_w, f"P{pid}\n".encode())
    for fd in (stdin_fd, out_w, err_w):
        os.close(fd)
    while True:  # as PID 1 we also reap the program's orphans
        waited, status = os.waitpid(-1, 0)
        if waited == pid:
            break
    os.write(status_w, f"S{status}\n".encode())


def _write_files(files: dict, workdir: str) -> None:
    for name, spec in files.items():
        path = os.path.normpath(os.path.join(workdir, name))
        if not path.startswith(workdir.rstrip("/") + "/"):
            raise ValueError(f"file name {name!r} leaves the work directory")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        data = base64.b64decode(spec["b64"]) if "b64" in spec else spec["text"].encode()
        with open(path, "wb") as f:
            f.write(data)


def _set_rlimits(limits: Limits, no_cgroup: bool) -> None:
    cpu = max(1, int(limits.cpu_s + 0.999))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))  # SIGXCPU at the soft limit, SIGKILL one second later
    file_bytes = limits.max_file_mb << 20
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits.max_open_files, limits.max_open_files))
    # Per host uid: a real ceiling when each run has a uid of its own, a shared one otherwise (cgroups preferred).
    resource.setrlimit(resource.RLIMIT_NPROC, (limits.max_processes, limits.max_processes))
    if no_cgroup:
        # Address space, not memory: generous so that `import numpy` (big virtual reservations) still works.
        address_space = max(2 * limits.memory_mb, limits.memory_mb + 1024) << 20
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))


def verdict(run: "Run", limits: Limits, cpu: float, oom_kills: int) -> dict:
    cap = limits.max_output_bytes
    stdout = bytes(run.out[:cap]).decode("utf-8", "replace")
    stderr = bytes(run.err[:max(0, cap - len(run.out))]).decode("utf-8", "replace")
    exit_code = None
    if run.reason:
        status = run.reason
    elif run.init_error:
        return infra_error(f"sandbox setup failed: {run.init_error}")
    elif run.wait_status is None:
        status = "memory" if oom_kills else "infra_error"
        stderr += "" if oom_kills else "\nsandbox: the run's init died without reporting"
    else:
        exit_code = os.waitstatus_to_exitcode(run.wait_status)
        if exit_code != 0 and oom_kills:
            status = "memory"
        elif exit_code == -signal.SIGXCPU or (exit_code == -signal.SIGKILL and cpu >= limits.cpu_s):
            status = "timeout"  # the CPU budget ran out
        elif exit_code == 0:
            status = "ok"
        elif _last_line(stderr).startswith("MemoryError"):
            status = "memory"
        else:
            status = "failed"
    return {"status": status, "exit_code": exit_code, "stdout": stdout, "stderr": stderr,
            "wall_s": round(run.end - run.start, 6), "cpu_s": round(cpu, 6)}


def infra_error(message: str) -> dict:
    return {"status": "infra_error", "exit_code": None, "stdout": "", "stderr": message, "wall_s": 0.0, "cpu_s": 0.0}


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _stdin_fd(text: str | None) -> int:
    if text is None:
        return os.open(os.devnull, os.O_RDONLY)
    fd = os.memfd_create("stdin")  # no pipe to feed while polling: the program reads it at its own pace
    os.write(fd, text.encode())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _send(conn: socket.socket, result: dict) -> None:
    try:
        conn.sendall(json.dumps(result).encode())
    except OSError:
        pass  # the caller gave up on this run
    conn.close()


def _read_all(conn: socket.socket) -> bytes:
    chunks = []
    while chunk := conn.recv(1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def main() -> None:
    sock = socket.socket(fileno=int(sys.argv[1]))
    server = Server(sock, json.loads(sys.argv[2]))
    hello = server.setup()
    sock.send(json.dumps(hello).encode())
    if hello["ok"]:
        server.serve()


if __name__ == "__main__":
    main()

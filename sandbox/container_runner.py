"""The runner inside each warm sandbox container: the container's PID 1, serving programs one after another.

Its source is the container's command (`python3 -I -c SOURCE`), so the image never goes stale when this file changes.
Reads one JSON request per line on stdin (the backend's attach stream), runs the program as a module named
"__sandbox__" in its own process group with rlimits, a wall limit and an output cap, then calls kill(-1, SIGKILL):
from PID 1 that reaches every other process of the container (daemons, orphans) while PID 1 itself is immune to
signals from inside, so a program cannot kill its runner either. It reaps them all (CPU time from wait4), wipes the
writable tmpfs mounts, so the next program finds the container as it was, and writes one JSON result line on stdout,
with "dirty" set when something of the program could not be removed (a tree too deep to walk, System V IPC objects):
that container is then replaced. The trade-off against the local backend: one container serves many programs, so
isolation between consecutive programs rests on this cleanup (same uid, wiped tmpfs); a container whose program
timed out is replaced too. Stdlib only.

A request with "argv" instead of "program" is one step of a compiled program (sandbox/steps.py): its argv is exec'd
in the work dir with the container's environment plus the step's. With "keep", a step that ends "ok" leaves the work
dir as it is, for the next step of the same program (the backend sends the steps one by one, setting the container's
limits to each step's between them); anything else (the last step, a failed one) wipes it, as after a program.
"""
import base64
import io
import json
import os
import resource
import select
import shutil
import signal
import sys
import time
import traceback
import types

WORK = "/work"  # the container's tmpfs work dir (docker_backend mounts it), not a host path
WORKDIRS = (WORK, "/tmp", "/dev/shm")
KILL_GRACE_S = 5.0
REAP_POLL_S = 0.001  # while killed processes are dying: how often to look for them


def run_source(source: str) -> int:
    """In the forked child: the program as a module named "__sandbox__", with fresh stdio; returns its exit status."""
    sys.stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)), encoding="utf-8")
    sys.stdout = io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "w", closefd=False)), encoding="utf-8")
    sys.stderr = io.TextIOWrapper(io.BufferedWriter(io.FileIO(2, "w", closefd=False)), encoding="utf-8",
                                  errors="backslashreplace", line_buffering=True)
    module = types.ModuleType("__sandbox__")
    sys.modules["__sandbox__"] = module
    sys.argv, sys.path[0] = ["program.py"], WORK
    try:
        exec(compile(source, "program.py", "exec"), module.__dict__)
        status = 0
    except SystemExit as e:
        status = 0 if e.code is None else e.code & 0xFF if isinstance(e.code, int) else 1
        if not isinstance(e.code, (int, type(None))):
            print(e.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        status = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            status = status or 120
    return status


def kill_all() -> None:
    """SIGKILL every process of the container but ourselves (PID 1)."""
    try:
        os.kill(-1, signal.SIGKILL)
    except ProcessLookupError:
        pass  # nobody left


def oom_kills() -> int:
    for path in ("/sys/fs/cgroup/memory/memory.oom_control", "/sys/fs/cgroup/memory.events"):
        try:
            with open(path) as f:
                for line in f:
                    if line.startswith("oom_kill "):
                        return int(line.split()[1])
        except OSError:
            continue
    return 0


def run(req: dict) -> dict:
    timeout_s = float(req.get("timeout_s", 10.0))
    cpu_s = float(req.get("cpu_s") or timeout_s)
    cap = int(req.get("max_output_bytes", 1 << 20))
    for name, spec in (req.get("files") or {}).items():
        path = os.path.normpath(os.path.join(WORK, name))
        if not path.startswith(WORK + os.sep):
            raise ValueError(f"file name {name!r} leaves the work directory")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(base64.b64decode(spec["b64"]) if "b64" in spec else spec["text"].encode())
    argv = req.get("argv")
    if argv:
        env = {**os.environ, **(req.get("env") or {})}
        executable = os.path.join(WORK, argv[0]) if "/" in argv[0] else shutil.which(argv[0], path=env.get("PATH"))
        if not executable or not os.access(executable, os.X_OK):
            raise FileNotFoundError(f"{argv[0]}: no such executable in the sandbox (PATH={env.get('PATH', '')})")
    ooms_before = oom_kills()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    in_r, in_w = os.pipe()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os.setsid()
        os.dup2(in_r, 0), os.dup2(out_w, 1), os.dup2(err_w, 2)
        os.closerange(3, 1 << 16)
        cpu = max(1, int(cpu_s + 0.999))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        file_bytes = int(req.get("max_file_mb", 64)) << 20
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        nofile = int(req.get("max_open_files", 256))
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        if argv:
            try:
                os.chdir(WORK)
                os.execve(executable, argv, env)
            finally:
                os._exit(127)
        os._exit(run_source(req["program"]))
    for fd in (in_r, out_w, err_w):
        os.close(fd)
    return supervise(pid, start, req, in_w, out_r, err_r, timeout_s, cpu_s, cap, ooms_before)


def supervise(pid, start, req, in_w, out_r, err_r, timeout_s, cpu_s, cap, ooms_before) -> dict:
    stdin = (req.get("stdin") or "").encode()
    pending_in = stdin
    os.set_blocking(in_w, False)
    buffers = {out_r: bytearray(), err_r: bytearray()}
    poller = select.poll()
    for fd in buffers:
        poller.register(fd, select.POLLIN)
    if pending_in:
        poller.register(in_w, select.POLLOUT)
    else:
        os.close(in_w)
    reaped = Reaped(pid)
    pidfd = os.pidfd_open(pid)  # readable when the program exits, even while a daemon keeps its pipes open
    poller.register(pidfd, select.POLLIN)
    reason, end, open_fds = None, None, set(buffers) | ({in_w} if pending_in else set())
    deadline = start + timeout_s
    while True:
        children_left = reaped.collect()
        if reaped.status is not None and end is None:
            end = reaped.end
            kill_all()  # the program is done: so is everything it started
        if not children_left and not buffers.keys() & open_fds:
            break
        now = time.monotonic()
        if reason is None and end is None and now >= deadline:
            reason, end = "timeout", now
            kill_all()
        if end is not None and now > end + KILL_GRACE_S:
            break  # something will not die: the backend replaces this container (the run timed out or is dirty)
        wait = deadline - now if end is None else REAP_POLL_S
        for fd, _ in poller.poll(max(0.0, wait) * 1000 + 1):
            if fd == pidfd:
                poller.unregister(pidfd)
                continue
            if fd == in_w:
                try:
                    pending_in = pending_in[os.write(in_w, pending_in[:65536]):]
                except OSError:
                    pending_in = b""
                if not pending_in:
                    poller.unregister(in_w), os.close(in_w), open_fds.discard(in_w)
                continue
            data = os.read(fd, 65536)
            if not data:
                poller.unregister(fd), open_fds.discard(fd)
                continue
            buffers[fd] += data
            if reason is None and len(buffers[out_r]) + len(buffers[err_r]) > cap:
                reason, end = "output_limit", time.monotonic()
                kill_all()
    for fd in (pidfd, out_r, err_r, *([in_w] if in_w in open_fds else [])):
        os.close(fd)
    cpu = reaped.cpu
    out, err = bytes(buffers[out_r][:cap]), bytes(buffers[err_r][:max(0, cap - len(buffers[out_r]))])
    exit_code = None if reason or reaped.status is None else os.waitstatus_to_exitcode(reaped.status)
    stderr = err.decode("utf-8", "replace")
    if reason:
        status = reason
    elif exit_code is None:
        status, stderr = "infra_error", stderr + "\nsandbox: the program was lost without an exit status"
    elif exit_code != 0 and oom_kills() > ooms_before:
        status = "memory"
    elif exit_code == -signal.SIGXCPU or (exit_code == -signal.SIGKILL and cpu >= cpu_s):
        status = "timeout"
    elif exit_code == 0:
        status = "ok"
    elif (stderr.strip().splitlines() or [""])[-1].startswith("MemoryError"):
        status = "memory"
    else:
        status = "failed"
    return {"status": status, "exit_code": exit_code, "stdout": out.decode("utf-8", "replace"), "stderr": stderr,
            "wall_s": round(end - start, 6), "cpu_s": round(cpu, 6)}


class Reaped:
    """Every exited child of ours: the program, and the orphans PID 1 inherits. CPU time adds up over all of them."""

    def __init__(self, pid: int):
        self.pid, self.status, self.end, self.cpu = pid, None, None, 0.0

    def collect(self) -> bool:
        """Reap what has exited; True while children remain."""
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return False
            if pid == 0:
                return True
            self.cpu += usage.ru_utime + usage.ru_stime
            if pid == self.pid:
                self.status, self.end = status, time.monotonic()


def wipe() -> bool:
    """Empty the writable mounts; False when something of the program's is left (the container is then replaced)."""
    clean = True
    for top in WORKDIRS:
        if os.path.isdir(top):
            clean = _empty(top) and clean
    return clean and not _system_v_objects_left()


def _empty(top: str) -> bool:
    """Iterative: a program can nest directories deeper than any recursion limit. Directories are made writable
    first, in case the program made them unreadable to itself."""
    stack, dirs = [top], []
    while stack:
        d = stack.pop()
        try:
            if d != top:
                dirs.append(d)
                os.chmod(d, 0o700)
            with os.scandir(d) as it:
                entries = list(it)
        except OSError:
            continue  # e.g. a path longer than PATH_MAX: it stays, and the container is replaced
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
            else:
                try:
                    os.unlink(entry.path)
                except OSError:
                    pass
    for d in reversed(dirs):
        try:
            os.rmdir(d)
        except OSError:
            pass
    return not os.listdir(top)


def _system_v_objects_left() -> bool:
    """Shared memory, semaphores or message queues outlive a process in the container's IPC namespace."""
    for kind in ("shm", "sem", "msg"):
        try:
            with open(f"/proc/sysvipc/{kind}") as f:
                if len(f.read().splitlines()) > 1:  # a header line, then one line per object
                    return True
        except OSError:
            pass
    return False


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    wipe()
    for line in sys.stdin.buffer:
        try:
            req = json.loads(line)
            result = run(req)
        except Exception as e:
            result = {"status": "infra_error", "exit_code": None, "stdout": "", "stderr": f"container runner: {e!r}",
                      "wall_s": 0.0, "cpu_s": 0.0}
            req = {}
        # a step that leaves its outputs to the next one (see the docstring); otherwise the program is over
        keep = req.get("keep") and result["status"] == "ok"
        result["dirty"] = False if keep else not wipe()
        reply = (json.dumps(result) + "\n").encode()
        while reply:  # a pipe takes a big result in parts
            reply = reply[os.write(1, reply):]


main()

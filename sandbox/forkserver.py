"""The local backend's fork server. Started by exec (see local.py) with a scrubbed environment; single-threaded.

    caller --(SOCK_SEQPACKET: one fd per run)--> server --(that fd)--> slot (PID 1 of its namespaces) --fork--> program

A slot is a process cloned once into new PID, mount, IPC and UTS namespaces, with the read-only tree, its own /proc
and its tmpfs scratch dirs set up once (isolation.py). It then runs programs one after another and supervises each
itself: it forks the program (which joins the slot's cgroup, enters a new IPC namespace, takes a uid of its own and a
new user namespace), watches its pipes, wall deadline and output cap, and when the program ends (or is stopped) calls
kill(-1, SIGKILL): from PID 1 that reaches every other process of the namespace (daemons, setsid double forks,
orphans) and is atomic with fork. Then it reaps them all (CPU time from wait4), empties /tmp, reads the cgroup's OOM
count and answers the caller on the fd it was handed.
The server only dispatches: each caller's connection goes to an idle slot, a new slot is started when all are busy,
and the slots, not the server, spend the CPU, so all cores work. Why slots: namespaces, mounts and cgroups made per
program, and detaching a tmpfs after each, took ~4.5 ms of a ~7 ms run (measured); a run in a slot costs one fork
and the program.
Stdlib only: run as `python -I forkserver.py FD CONFIG_JSON`, with this directory as sys.path[0].
"""
import base64
import collections
import gc
import json
import os
import resource
import select
import signal
import socket
import sys
import time

# -I (isolated mode) leaves the script's directory off sys.path; the helper modules beside this file are needed.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cgroups  # noqa: E402
import isolation  # noqa: E402
import program  # noqa: E402
import syscalls as sc  # noqa: E402

READ_CHUNK = 1 << 16
KILL_GRACE_S = 5.0  # after SIGKILL, pipes close within milliseconds; this only bounds a stuck run
REAP_POLL_S = 0.001  # while killed processes are dying: how often to look for them
MAX_SLOTS = 64  # concurrent runs beyond this wait for a slot
RUNS_PER_SLOT = 1000  # then the slot is replaced: bounds whatever a long-lived slot might accumulate
SLOT_FLAGS = sc.CLONE_NEWPID | sc.CLONE_NEWNS | sc.CLONE_NEWIPC | sc.CLONE_NEWUTS


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
        self.slots: dict[int, Slot] = {}  # by the fd of the server's end of their control socket
        self.idle: list[Slot] = []
        self.waiting: collections.deque[socket.socket] = collections.deque()
        self.slots_started = 0

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
        # compile() builds the `ast` module's ~120 node types the first time it is called (even on a plain string):
        # do it once here, or every forked program pays for it (about a third of a trivial run's CPU, measured).
        compile("pass", "<warm-up>", "exec")
        # Keep the collector off the inherited objects, so forks do not copy-on-write pages just to scan them.
        gc.freeze()
        return self._probe()

    def _kept_paths(self) -> list[str]:
        """The interpreter's own trees (isolation.interpreter_paths) and the toolchains the caller names stay visible
        even under a hidden directory (a venv inside the project)."""
        return sorted(set(isolation.interpreter_paths()) | set(self.config.get("keep", [])))

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
                for slot in list(self.slots.values()):  # started with the old setting
                    self.retire(slot)
                self.warnings.append(f"per-run user namespace unavailable ({result['stderr'].strip()}); "
                                     "runs still get their own host uid")
                continue
            break
        return {"ok": False, "error": f"a trivial program failed in the sandbox: {result['stderr'].strip()}"}

    def _run_inline(self, request: dict) -> dict:
        ours, theirs = socket.socketpair()
        ours.sendall(json.dumps(request).encode())
        ours.shutdown(socket.SHUT_WR)
        self.submit(theirs)
        with ours:
            reply = _read_all(ours)
        for slot in list(self.slots.values()):  # collect the slot's "idle" (or its death)
            self.on_slot_message(slot, block=True)
        return json.loads(reply) if reply else infra_error("sandbox: the slot exited without a result")

    # -- serving -------------------------------------------------------------------------------------------------
    def serve(self) -> None:
        self.poller.register(self.sock, select.POLLIN)
        try:
            while True:
                # Slots' words first: a run that came in the same batch as an "idle" then goes to that slot, not to a
                # new one (a slot says "idle" before it answers, so its caller's next run finds it idle).
                for fd, _ in sorted(self.poller.poll(), key=lambda event: event[0] == self.sock.fileno()):
                    if fd == self.sock.fileno():
                        msg, fds, _, _ = socket.recv_fds(self.sock, 16, 1)
                        if not msg:
                            return  # the caller is gone
                        self.submit(_caller_socket(fds[0]))
                    elif fd in self.slots:
                        self.on_slot_message(self.slots[fd])
        finally:
            for slot in list(self.slots.values()):
                self.retire(slot)
            if self.cgroups:
                self.cgroups.remove()

    def submit(self, conn: socket.socket) -> None:
        """Hand a caller's connection to an idle slot, a new one, or the queue when MAX_SLOTS are busy."""
        if not self.idle and len(self.slots) >= MAX_SLOTS:
            self.waiting.append(conn)
            return
        try:
            slot = self.idle.pop() if self.idle else self.start_slot()
            slot.dispatch(conn)
        except Exception as e:  # anything here is the sandbox's fault, never the program's
            _send(conn, infra_error(f"sandbox: could not start the run: {type(e).__name__}: {e}"))
        conn.close()

    def start_slot(self) -> "Slot":
        self.slots_started += 1
        slot = Slot(self, self.slots_started)
        self.slots[slot.ctl.fileno()] = slot
        self.poller.register(slot.ctl, select.POLLIN)
        return slot

    def on_slot_message(self, slot: "Slot", block: bool = False) -> None:
        try:
            msg = slot.ctl.recv(16, 0 if block else socket.MSG_DONTWAIT)
        except BlockingIOError:
            return  # a stale event (a retired slot's fd number, reused)
        except OSError:
            msg = b""
        if msg == b"I":
            self.idle.append(slot)
        else:  # it exited, or said it is unhealthy or has done its share ("X")
            self.retire(slot)
        if self.waiting:
            self.submit(self.waiting.popleft())

    def retire(self, slot: "Slot") -> None:
        """Kill a slot (the kernel kills the rest of its namespace with it) and remove its cgroup."""
        self.slots.pop(slot.ctl.fileno(), None)
        if slot in self.idle:
            self.idle.remove(slot)
        self.poller.unregister(slot.ctl)
        slot.ctl.close()
        try:
            os.kill(slot.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(slot.pid, 0)
        if slot.cgroup:
            slot.cgroup.remove()


class Slot:
    """The server's handle on one slot process: its control socket, pid and cgroup."""

    def __init__(self, server: Server, index: int):
        self.ctl, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.cgroup = server.cgroups.new_slot(f"slot-{index}") if server.cgroups else None
        try:
            pid = sc.fork_into(SLOT_FLAGS) if server.isolate else os.fork()
            if pid == 0:
                try:
                    keep = [theirs.fileno(), *(self.cgroup.fds() if self.cgroup else [])]
                    _close_fds_except(keep)
                    SlotProcess(theirs, self.cgroup, index, server.isolate, server.user_namespace,
                                server.run_uid).serve()
                finally:
                    os._exit(0)
        finally:
            theirs.close()
            if self.cgroup:
                self.cgroup.close()  # the slot has its own copies; the server only removes the directories
        self.pid = pid

    def dispatch(self, conn: socket.socket) -> None:
        socket.send_fds(self.ctl, [b"R"], [conn.fileno()])


class SlotProcess:
    """The slot itself: PID 1 of its namespaces (when isolated), running and supervising one program at a time."""

    def __init__(self, ctl, cgroup, index, isolate, user_namespace, run_uid):
        self.ctl, self.cgroup, self.index = ctl, cgroup, index
        self.isolate, self.user_namespace, self.run_uid = isolate, user_namespace, run_uid
        self.runs = 0
        self.healthy = True
        self.setup_error = None

    def setup(self) -> None:
        # Dies with the server, taking its namespace along (a server gone before this line shows as EOF on ctl).
        sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a program must not be able to interrupt its supervisor
        sc.prctl(sc.PR_SET_DUMPABLE, 0)  # nor ptrace it where it runs under the same uid (no root: no uid per run)
        try:
            if self.isolate:
                isolation.enter_slot_namespaces()
                self.scratch = isolation.ScratchDirs()
        except OSError as e:
            self.setup_error = str(e)
        # Only PID 1 of a namespace may use kill(-1): anywhere else it would signal every process of the host.
        self.pid1 = self.isolate and os.getpid() == 1
        if not self.pid1:
            sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 1)  # orphans of a run come back to us to be reaped
        sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)  # inherited by every program: setuid binaries cannot give privileges back
        os.chdir("/")
        # What every program would otherwise build or undo for itself, done once here (see program.py).
        self.streams = program.make_streams()
        program.forget_server_modules()
        gc.freeze()

    def serve(self) -> None:
        self.setup()
        while True:
            msg, fds, _, _ = socket.recv_fds(self.ctl, 16, 1)
            if not msg:
                return  # the server is gone
            conn = _caller_socket(fds[0])
            conn.settimeout(60)  # the caller sends its request at once; this only guards against a broken one
            try:
                request = json.loads(_read_all(conn))
                if self.setup_error:
                    result = infra_error(f"sandbox setup failed: {self.setup_error}")
                else:
                    result = run_request(self, request)
            except Exception as e:
                self.healthy = False
                result = infra_error(f"sandbox: {type(e).__name__}: {e}")
            self.runs += 1
            more = self.healthy and not self.setup_error and self.runs < RUNS_PER_SLOT
            if more:  # "idle" before the answer: the server can hand us the next run while this one is sent
                self.ctl.send(b"I")
            _send(conn, result)
            if not more:  # after it: the server kills this slot when it reads this
                self.ctl.send(b"X")

    def next_uid(self) -> int | None:
        """Host uids are free for the taking: one per run, and no two slots' runs share one."""
        if not self.run_uid:
            return None
        return isolation.RUN_UID_BASE + (self.index % 1000) * 1_000_000 + self.runs % 1_000_000

    def kill_all(self, program_pid: int) -> None:
        if self.pid1:
            _kill(-1)  # every process of our namespace but ourselves; forks racing with it get the signal too
            return
        _kill(-program_pid)  # without a PID namespace: the program's process group, and its cgroup's members
        for pid in self.cgroup.member_pids() if self.cgroup else []:
            _kill(pid)


def run_request(slot: SlotProcess, req: dict) -> dict:
    """A Python program, or a Program's steps (sandbox/steps.py) one after another in one work dir as one uid."""
    steps = req.get("steps")
    stages = [{**req, **step, "stdin": req.get("stdin") if i == len(steps) - 1 else None}
              for i, step in enumerate(steps)] if steps else [req]
    limits = [Limits(stage) for stage in stages]
    run_uid = slot.next_uid()
    if slot.isolate:
        workdir = isolation.WORKDIR
        slot.scratch.prepare(max(lim.memory_mb for lim in limits))  # build outputs live here too
    else:
        workdir = _unisolated_workdir()
        if run_uid is not None:
            os.chown(workdir, run_uid, run_uid)
    try:
        for i, (stage, lim) in enumerate(zip(stages, limits)):
            result = SlotRun(slot, stage, lim).run(workdir, run_uid, req.get("files") or {} if i == 0 else {})
            if steps:
                result["step"] = stage.get("name", str(i))
            if result["status"] != "ok":
                break
    finally:
        if slot.isolate:
            slot.scratch.clean()
        else:
            _remove_unisolated_workdir(workdir)
    return result


class SlotRun:
    """One program (or one step of one) in a slot, from fork to verdict."""

    def __init__(self, slot: SlotProcess, req: dict, limits: "Limits"):
        self.slot, self.req = slot, req
        self.limits = limits
        self.out, self.err, self.setup_err = bytearray(), bytearray(), b""
        self.reason = None  # "timeout" or "output_limit" when we stopped the run
        self.wait_status = None
        self.cpu = 0.0
        self.killed_at = self.end = None

    def run(self, workdir: str, run_uid: int | None, files: dict) -> dict:
        slot, limits = self.slot, self.limits
        oom_before = 0
        if slot.cgroup:
            slot.cgroup.set_limits(limits.memory_mb << 20, limits.max_processes)
            oom_before = slot.cgroup.oom_kills()
        self._supervise(self._spawn(workdir, run_uid, files))
        oom = slot.cgroup.oom_kills() - oom_before if slot.cgroup else 0
        if self.setup_err:
            return infra_error(f"sandbox setup failed: {self.setup_err.decode(errors='replace').strip()}")
        return verdict(self, self.limits, self.cpu, oom)

    def _spawn(self, workdir: str, run_uid: int | None, files: dict) -> int:
        slot, limits = self.slot, self.limits
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        # Read once the program has ended, not watched: the program closes its end before running the source, which
        # would wake the slot once more per run for nothing. Non-blocking, so that reading it can never hang.
        setup_r, setup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        stdin_fd = _stdin_fd(self.req.get("stdin"))
        self.start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            try:
                for fd in (out_r, err_r, setup_r, slot.ctl.fileno()):
                    os.close(fd)
                program_process(self.req, files, limits, slot, run_uid, workdir, stdin_fd, out_w, err_w)
            except BaseException as e:
                os.write(setup_w, f"{type(e).__name__}: {e}\n".encode())
            finally:
                os._exit(127)
        for fd in (out_w, err_w, setup_w, stdin_fd):
            os.close(fd)
        self.pipes = {out_r: self.out, err_r: self.err}
        self.setup_r = setup_r
        return pid

    def _supervise(self, pid: int) -> None:
        """Until the program has ended, everything it started is dead and reaped, and its pipes are drained."""
        self.pid = pid
        pidfd = os.pidfd_open(pid)  # readable when the program exits: no SIGCHLD handling, no blocking wait
        poller = select.poll()
        for fd in (*self.pipes, pidfd):
            poller.register(fd, select.POLLIN)
        deadline = self.start + self.limits.timeout_s
        try:
            while True:
                children_left = self._reap()
                if self.wait_status is not None and self.killed_at is None:
                    self._kill(None)  # the program is done: whatever it left running goes with it
                if not children_left and not self.pipes:
                    return
                now = time.monotonic()
                if self.killed_at is None and now >= deadline:
                    self._kill("timeout")
                elif self.killed_at is not None and now > self.killed_at + KILL_GRACE_S:
                    self.slot.healthy = False  # a process that will not die: the server replaces this slot
                    return
                wait = deadline - now if self.killed_at is None else REAP_POLL_S
                for fd, _ in poller.poll(max(0.0, wait) * 1000 + 1):
                    if fd == pidfd:
                        poller.unregister(fd)
                    else:
                        self._read(poller, fd)
        finally:
            os.close(pidfd)
            for fd in self.pipes:
                os.close(fd)
            self.setup_err = _read_available(self.setup_r)
            os.close(self.setup_r)

    def _reap(self) -> bool:
        """Collect every exited child (the program, and the orphans we inherit); True while some remain."""
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return False
            if pid == 0:
                return True
            self.cpu += usage.ru_utime + usage.ru_stime
            if pid == self.pid:
                self.wait_status = status
                self.end = self.end or time.monotonic()

    def _read(self, poller, fd: int) -> None:
        data = os.read(fd, READ_CHUNK)
        if not data:
            poller.unregister(fd)
            os.close(fd)
            del self.pipes[fd]
            return
        self.pipes[fd] += data
        if self.killed_at is None and len(self.out) + len(self.err) > self.limits.max_output_bytes:
            self._kill("output_limit")

    def _kill(self, reason: str | None) -> None:
        self.reason = reason
        self.killed_at = time.monotonic()
        if reason:
            self.end = self.killed_at
        self.slot.kill_all(self.pid)


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
        address_space = req.get("address_space_mb")  # None: the default below; 0: none (see steps.Step)
        self.address_space_mb = None if address_space is None else int(address_space)


def program_process(req, files, limits, slot, run_uid, workdir, stdin_fd, out_w, err_w) -> None:
    """The forked program, still privileged: join the slot's cgroup, isolate and drop privileges, run the source
    (or exec the step's argv)."""
    if slot.cgroup:
        slot.cgroup.join()
    if slot.isolate:
        sc.unshare(sc.CLONE_NEWIPC)  # no System V objects left behind by the slot's previous run
    try:
        isolation.drop_privileges(run_uid, user_namespace=slot.isolate and slot.user_namespace)
    except OSError as e:
        raise OSError(e.errno, f"user namespace: {e}") from None
    sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)  # after the uid change, which clears it; dies with its slot
    _write_files(files, workdir)
    _set_rlimits(limits, slot.cgroup is None)
    if "argv" in req:
        program.exec_program(req["argv"], req.get("env") or {}, stdin_fd, out_w, err_w, workdir)
    program.run_program(req["program"], slot.streams, stdin_fd, out_w, err_w, workdir)


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
    if no_cgroup and limits.address_space_mb != 0:
        # Address space, not memory: generous so that `import numpy` (big virtual reservations) still works.
        address_space = limits.address_space_mb or max(2 * limits.memory_mb, limits.memory_mb + 1024)
        resource.setrlimit(resource.RLIMIT_AS, (address_space << 20, address_space << 20))


def verdict(run: SlotRun, limits: Limits, cpu: float, oom_kills: int) -> dict:
    cap = limits.max_output_bytes
    stdout = bytes(run.out[:cap]).decode("utf-8", "replace")
    stderr = bytes(run.err[:max(0, cap - len(run.out))]).decode("utf-8", "replace")
    exit_code = None
    end = run.end or time.monotonic()
    if run.reason:
        status = run.reason
    elif run.wait_status is None:
        status = "memory" if oom_kills else "infra_error"
        stderr += "" if oom_kills else "\nsandbox: the program was lost without an exit status"
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
            "wall_s": round(end - run.start, 6), "cpu_s": round(cpu, 6)}


def infra_error(message: str) -> dict:
    return {"status": "infra_error", "exit_code": None, "stdout": "", "stderr": message, "wall_s": 0.0, "cpu_s": 0.0}


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _close_fds_except(keep: list[int]) -> None:
    low = 3
    for fd in sorted(set(keep)):
        if fd >= low:
            os.closerange(low, fd)
            low = fd + 1
    os.closerange(low, 1 << 16)


# tempfile and shutil are imported only where unisolated: shutil loads zlib, bz2 and lzma, whose 30 mappings every
# fork of an isolated slot would copy for nothing (~3% of a bare fork, measured).
def _unisolated_workdir() -> str:
    import tempfile
    return tempfile.mkdtemp(prefix="codelm-sandbox-")


def _remove_unisolated_workdir(workdir: str) -> None:
    import shutil
    shutil.rmtree(workdir, ignore_errors=True)


def _stdin_fd(text: str | None) -> int:
    if text is None:
        return os.open(os.devnull, os.O_RDONLY)
    fd = os.memfd_create("stdin")  # no pipe to feed while polling: the program reads it at its own pace
    os.write(fd, text.encode())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _caller_socket(fd: int) -> socket.socket:
    # The caller's end of a socketpair(); saying so spares the three system calls that would find it out.
    return socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, fileno=fd)


def _send(conn: socket.socket, result: dict) -> None:
    try:
        conn.sendall(json.dumps(result).encode())
    except OSError:
        pass  # the caller gave up on this run
    conn.close()


def _read_available(fd: int) -> bytes:
    chunks = []
    try:
        while chunk := os.read(fd, READ_CHUNK):
            chunks.append(chunk)
    except BlockingIOError:
        pass  # a writer is still alive: what it wrote so far is all there will be
    return b"".join(chunks)


def _read_all(conn: socket.socket) -> bytes:
    chunks = []
    while chunk := conn.recv(1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _open_standard_fds() -> None:
    """/dev/null on fds 0-2 where the caller left them closed: slots build programs' streams over them."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # takes the lowest free number: this one


def main() -> None:
    _open_standard_fds()
    program.reset_signals()
    sock = socket.socket(fileno=int(sys.argv[1]))
    server = Server(sock, json.loads(sys.argv[2]))
    hello = server.setup()
    sock.send(json.dumps(hello).encode())
    if hello["ok"]:
        server.serve()


if __name__ == "__main__":
    main()

"""Per-run memory and process ceilings from cgroups, v1 (these machines) or v2.

A cgroup holds as root too, unlike RLIMIT_NPROC, and charges every process of the run (and the tmpfs pages it
writes) to one memory budget, unlike RLIMIT_AS, which counts address space and so breaks `import numpy` long before
real memory runs out. Stdlib only: the fork server imports this as a plain script.
"""
import os
import time

ROOT = "/sys/fs/cgroup"


def _own_paths() -> dict[str, str]:
    """controller -> this process's cgroup path (v2 under the key "")."""
    paths = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for controller in controllers.split(","):
                paths[controller] = path
    return paths


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


class SlotCgroup:
    """The cgroups of one slot (see forkserver.py): limits set per run, joined by each program, OOM kills counted.

    Every file is opened once, by the server, before the slot makes its mount tree read-only: the slot writes through
    these descriptors, which belong to the server's (writable) mounts, and opening them later would be refused.
    """

    def __init__(self, dirs: list[str], limit_files: dict[str, list[str]], oom_file: str):
        self.dirs = dirs
        self.procs = [os.open(os.path.join(d, "cgroup.procs"), os.O_WRONLY) for d in dirs]
        self.limit_fds = {key: [os.open(path, os.O_WRONLY) for path in paths] for key, paths in limit_files.items()}
        self.oom_fd = os.open(oom_file, os.O_RDONLY)
        self.current: dict[str, int] = {}

    def fds(self) -> list[int]:
        fds = [*self.procs, *(fd for fds in self.limit_fds.values() for fd in fds)]
        return fds if self.oom_fd is None else [*fds, self.oom_fd]

    def set_limits(self, memory_bytes: int, max_pids: int) -> None:
        """Written only when they change from the previous run's. Raises OSError (v1: EBUSY below current usage)."""
        for key, value in (("memory", memory_bytes), ("pids", max_pids)):
            old = self.current.get(key)
            if old == value:
                continue
            fds = self.limit_fds[key]
            # v1 keeps memory+swap >= memory: raise the memory+swap limit first, lower it last.
            for fd in (reversed(fds) if old is not None and value > old else fds):
                os.pwrite(fd, str(value).encode(), 0)
            self.current[key] = value

    def join(self) -> None:
        """Move the calling process in (its children follow); "0" means the writer itself in v1 and v2."""
        for fd in self.procs:
            os.write(fd, b"0")

    def oom_kills(self) -> int:
        """The cgroup's OOM kills so far (a counter: callers take differences)."""
        for line in os.pread(self.oom_fd, 1 << 14, 0).decode().splitlines():
            name, _, value = line.partition(" ")
            if name == "oom_kill":
                return int(value)
        return 0

    def member_pids(self) -> list[int]:
        pids = set()
        for d in self.dirs:
            try:
                with open(os.path.join(d, "cgroup.procs")) as f:
                    pids.update(int(line) for line in f if line.strip())
            except OSError:
                pass
        return sorted(pids)

    def close(self) -> None:
        """Close our descriptors (once: the numbers are reused by whatever opens next)."""
        for fd in self.fds():
            os.close(fd)
        self.procs, self.limit_fds, self.oom_fd = [], {}, None

    def remove(self) -> None:
        self.close()
        _remove_dirs(self.dirs)


def _remove_dirs(dirs: list[str]) -> None:
    for d in dirs:
        for attempt in range(200):  # the last processes of a killed slot can take a moment to be released
            try:
                os.rmdir(d)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.001 * min(attempt + 1, 20))


class Cgroups:
    """A parent cgroup per controller for one fork server; one child per slot under it."""

    version = 0

    def __init__(self, parents: list[str]):
        self.parents = parents

    def new_slot(self, name: str) -> SlotCgroup:
        raise NotImplementedError

    def remove(self) -> None:
        for parent in self.parents:
            for child in os.listdir(parent):
                if os.path.isdir(os.path.join(parent, child)):
                    _remove_dirs([os.path.join(parent, child)])
            try:
                os.rmdir(parent)
            except OSError:
                pass


class CgroupsV1(Cgroups):
    version = 1

    def new_slot(self, name):
        memory, pids = (os.path.join(p, name) for p in self.parents)
        for d in (memory, pids):
            os.makedirs(d, exist_ok=True)
        memory_files = [os.path.join(memory, "memory.limit_in_bytes")]
        swap_limit = os.path.join(memory, "memory.memsw.limit_in_bytes")
        if os.path.exists(swap_limit):  # only with swap accounting; without it the run could swap instead of OOM
            memory_files.append(swap_limit)
        return SlotCgroup([memory, pids], {"memory": memory_files, "pids": [os.path.join(pids, "pids.max")]},
                          os.path.join(memory, "memory.oom_control"))


class CgroupsV2(Cgroups):
    version = 2

    def new_slot(self, name):
        d = os.path.join(self.parents[0], name)
        os.makedirs(d, exist_ok=True)
        if os.path.exists(os.path.join(d, "memory.swap.max")):
            _write(os.path.join(d, "memory.swap.max"), "0")
        return SlotCgroup([d], {"memory": [os.path.join(d, "memory.max")], "pids": [os.path.join(d, "pids.max")]},
                          os.path.join(d, "memory.events"))


def _remove_stale(parent_dir: str) -> None:
    """Parents left by fork servers that died without cleaning up (SIGKILL): remove them if their pid is gone."""
    try:
        names = os.listdir(parent_dir)
    except OSError:
        return
    for name in names:
        pid = name.removeprefix("codelm-sandbox-")
        if name.startswith("codelm-sandbox-") and pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            Cgroups([os.path.join(parent_dir, name)]).remove()


def create(name: str) -> tuple[Cgroups | None, str]:
    """Make this server's parent cgroups; returns (cgroups or None, why not)."""
    try:
        own = _own_paths()
    except OSError as e:
        return None, f"cannot read /proc/self/cgroup: {e}"
    v1_memory = os.path.join(ROOT, "memory")
    if "memory" in own and "pids" in own and os.path.exists(os.path.join(v1_memory, "memory.limit_in_bytes")):
        parents = [os.path.join(ROOT, c) + own[c].rstrip("/") + "/" + name for c in ("memory", "pids")]
        try:
            for p in parents:
                _remove_stale(os.path.dirname(p))
                os.makedirs(p, exist_ok=True)
            return CgroupsV1(parents), ""
        except OSError as e:
            return None, f"cgroup v1 not writable: {e}"
    if "" in own and os.path.exists(os.path.join(ROOT, "cgroup.controllers")):
        base = ROOT + own[""].rstrip("/")
        parent = os.path.join(base, name)
        try:
            with open(os.path.join(base, "cgroup.subtree_control")) as f:
                enabled = f.read().split()
            if not {"memory", "pids"} <= set(enabled):
                # Only works where this cgroup has no processes of its own (v2's no-internal-processes rule).
                _write(os.path.join(base, "cgroup.subtree_control"), "+memory +pids")
            _remove_stale(base)
            os.makedirs(parent, exist_ok=True)
            _write(os.path.join(parent, "cgroup.subtree_control"), "+memory +pids")
            return CgroupsV2([parent]), ""
        except OSError as e:
            return None, f"cgroup v2 memory/pids controllers not delegated here: {e}"
    return None, "no memory and pids cgroup controllers found"

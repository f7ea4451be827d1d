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


def _read_counter(path: str, key: str) -> int:
    try:
        with open(path) as f:
            for line in f:
                name, _, value = line.partition(" ")
                if name == key:
                    return int(value)
    except OSError:
        pass
    return 0


class RunCgroup:
    """The cgroups of one run: join them, read whether the OOM killer struck, remove them."""

    def __init__(self, dirs: list[str], oom_file: str):
        self.dirs = dirs
        self.oom_file = oom_file

    def join(self) -> None:
        """Move the calling process in (its children follow); "0" means the writer itself in v1 and v2."""
        for d in self.dirs:
            _write(os.path.join(d, "cgroup.procs"), "0")

    def oom_kills(self) -> int:
        return _read_counter(self.oom_file, "oom_kill")

    def remove(self) -> None:
        for d in self.dirs:
            for attempt in range(200):  # the last processes of a killed run can take a moment to be released
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.001 * min(attempt + 1, 20))


class Cgroups:
    """A parent cgroup per controller for one fork server; one child per run under it."""

    version = 0

    def __init__(self, parents: list[str]):
        self.parents = parents

    def new_run(self, name: str, memory_bytes: int, max_pids: int) -> RunCgroup:
        raise NotImplementedError

    def remove(self) -> None:
        for parent in self.parents:
            for child in os.listdir(parent):
                if os.path.isdir(os.path.join(parent, child)):
                    RunCgroup([os.path.join(parent, child)], "").remove()
            try:
                os.rmdir(parent)
            except OSError:
                pass


class CgroupsV1(Cgroups):
    version = 1

    def new_run(self, name, memory_bytes, max_pids):
        memory, pids = (os.path.join(p, name) for p in self.parents)
        for d in (memory, pids):
            os.makedirs(d, exist_ok=True)
        _write(os.path.join(pids, "pids.max"), str(max_pids))
        _write(os.path.join(memory, "memory.limit_in_bytes"), str(memory_bytes))
        swap_limit = os.path.join(memory, "memory.memsw.limit_in_bytes")
        if os.path.exists(swap_limit):  # only with swap accounting; without it the run could swap instead of OOM
            _write(swap_limit, str(memory_bytes))
        return RunCgroup([memory, pids], os.path.join(memory, "memory.oom_control"))


class CgroupsV2(Cgroups):
    version = 2

    def new_run(self, name, memory_bytes, max_pids):
        d = os.path.join(self.parents[0], name)
        os.makedirs(d, exist_ok=True)
        _write(os.path.join(d, "pids.max"), str(max_pids))
        _write(os.path.join(d, "memory.max"), str(memory_bytes))
        if os.path.exists(os.path.join(d, "memory.swap.max")):
            _write(os.path.join(d, "memory.swap.max"), "0")
        return RunCgroup([d], os.path.join(d, "memory.events"))


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

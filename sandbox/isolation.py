"""Namespaces, mounts and privileges: once for the fork server, once per slot, then per run for each program.

Layering (why each step happens where it does):
  server, once:  its own mount namespace with private propagation, tmpfs over the host's home directories and the
                 project (re-exposing the interpreter's prefix and site-packages, so `import numpy` still works), and a
                 network namespace with nothing in it but a downed loopback, which every slot then inherits.
  slot, once:    cloned into new PID, mount, IPC and UTS namespaces; every mount read-only in one mount_setattr call;
                 a /proc that shows only the slot's own processes.
  run, per fork: an empty tmpfs on /tmp (the program's cwd) and /dev/shm (ScratchDirs); the program gets a new IPC namespace, then a host uid of its own (no capabilities left) inside a
                 new user namespace. Because the mount namespace is created before and owned outside that user
                 namespace, the program cannot unmount or remount anything, even as "root" of its user namespace.
Stdlib only (imported by the fork server as a plain script).
"""
import functools
import os
import sys

import syscalls as sc

RUN_UID_BASE = 1_000_000  # runs get host uids from here on, one each (see forkserver.run_uid): they own nothing
WORKDIR = "/tmp"


def _under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


@functools.lru_cache(maxsize=1)
def interpreter_paths() -> list[str]:
    """What programs need of the interpreter: its base installation and the site-packages on sys.path. Not a
    virtualenv's own directory (sys.prefix): beyond its site-packages it holds nothing a program needs.
    Computed once, in the server before it hides anything (slots inherit the answer): resolved after the project is
    hidden, a virtualenv's interpreter symlink inside it would no longer lead to the real interpreter."""
    keep = {sys.base_prefix, sys.base_exec_prefix, os.path.dirname(os.path.realpath(sys.executable))}
    keep.update(p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and os.path.isdir(p))
    return sorted(keep)


def isolate_server(hide: list[str], keep: list[str]) -> None:
    """Enter the server's namespaces and hide `hide` (except the `keep` paths beneath them). Raises OSError."""
    uid, gid = os.geteuid(), os.getegid()
    flags = sc.CLONE_NEWNS | sc.CLONE_NEWNET
    if uid != 0:
        flags |= sc.CLONE_NEWUSER  # unprivileged: become root of our own user namespace to mount at all
    sc.unshare(flags)
    if uid != 0:
        _map_self(uid, gid, inside=0)
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)  # nothing we mount propagates back to the host
    hide = [h for h in hide if os.path.isdir(h)]
    hide = [h for h in hide if not any(o != h and _under(h, o) for o in hide)]
    # Open what must stay visible before covering it: bind mounts then come from these fds.
    kept = {k: os.open(k, os.O_PATH | os.O_DIRECTORY) for k in keep
            if os.path.isdir(k) and any(_under(k, h) for h in hide)}
    for h in hide:
        sc.mount("tmpfs", h, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, "size=64k,mode=755")
    for k, fd in sorted(kept.items()):
        os.makedirs(k, exist_ok=True)
        sc.mount(f"/proc/self/fd/{fd}", k, None, sc.MS_BIND | sc.MS_REC)
        os.close(fd)


def enter_slot_namespaces() -> None:
    """Called by a slot (already PID 1 of new PID, mount, IPC and UTS namespaces, still privileged)."""
    sc.sethostname("sandbox")
    sc.make_tree_readonly("/")
    sc.mount("proc", "/proc", "proc", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)


class ScratchDirs:
    """/tmp (the program's cwd) and /dev/shm of a slot: tmpfs sized like the run's memory (and charged to its cgroup),
    mounted once and emptied after every run.

    Emptying an untouched /tmp costs microseconds where a fresh mount per run cost ~2 ms of wall time (detaching a
    mount waits for an RCU grace period). Nothing of a run is alive to hold a file open when it is emptied; a tree
    that cannot be emptied (too deep to walk) gets fresh mounts instead.

    A virtualenv living under /tmp (a clone in /tmp) would vanish under the run's /tmp: its site-packages are bound
    back, read-only, at their own paths inside it (opened before anything covers them), and survive the emptying.
    """

    def __init__(self):
        self.targets = [WORKDIR] + (["/dev/shm"] if os.path.isdir("/dev/shm") else [])
        self.size_mb = None
        self.kept = {p: os.open(p, os.O_PATH | os.O_DIRECTORY) for p in interpreter_paths()
                     if any(_under(p, t) and p != t for t in self.targets) and os.path.isdir(p)}
        self.ancestors = {os.path.dirname(p) for p in self.kept}
        for p in list(self.ancestors):
            while p not in self.targets and p != "/":
                self.ancestors.add(p)
                p = os.path.dirname(p)

    def prepare(self, size_mb: int) -> None:
        if size_mb == self.size_mb:
            return
        flags = sc.MS_NOSUID | sc.MS_NODEV | (sc.MS_REMOUNT if self.size_mb is not None else 0)
        for target in self.targets:
            sc.mount("tmpfs", target, "tmpfs", flags, f"size={size_mb}m,mode=1777")
        if self.size_mb is None:
            for path, fd in sorted(self.kept.items()):
                os.makedirs(path, mode=0o755, exist_ok=True)
                sc.mount(f"/proc/self/fd/{fd}", path, None, sc.MS_BIND | sc.MS_REC)
                sc.make_tree_readonly(path)
        self.size_mb = size_mb

    def clean(self) -> None:
        try:
            for target in self.targets:
                _empty_dir(target, self.kept, self.ancestors)
            if not all(os.path.ismount(p) for p in self.kept):  # a run moved a kept tree away: start afresh
                raise OSError("a kept directory was moved")
        except (OSError, RecursionError):
            for target in self.targets:
                sc.umount(target, sc.MNT_DETACH)
            self.size_mb = None


def _empty_dir(path: str, kept=(), ancestors=()) -> None:
    """Remove what is in path, except the kept mounts and the directories leading to them. Not shutil.rmtree:
    importing shutil loads zlib, bz2 and lzma into the slot, and every fork then copies their mappings. Nothing of the
    run is alive, so nothing can race this walk."""
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.path in kept:
                continue
            if entry.path in ancestors and entry.is_dir(follow_symlinks=False):
                _empty_dir(entry.path, kept, ancestors)
            elif entry.is_dir(follow_symlinks=False):
                _empty_dir(entry.path)
                os.rmdir(entry.path)
            else:
                os.unlink(entry.path)


def drop_privileges(run_uid: int | None, user_namespace: bool) -> None:
    """Become run_uid (when root) with no capabilities, then enter a user namespace mapping only that uid.

    The caller has set PR_SET_NO_NEW_PRIVS already (the slot does, once, for all its programs)."""
    if run_uid is not None:
        os.setgroups([])
        os.setresgid(run_uid, run_uid, run_uid)
        os.setresuid(run_uid, run_uid, run_uid)  # leaving uid 0 clears every capability
    # A uid change, or a non-dumpable slot, leaves /proc/self owned by root: we could not write our id maps.
    sc.prctl(sc.PR_SET_DUMPABLE, 1)
    if user_namespace:
        uid, gid = os.geteuid(), os.getegid()
        sc.unshare(sc.CLONE_NEWUSER)
        _map_self(uid, gid, inside=uid)


def _map_self(uid: int, gid: int, inside: int) -> None:
    # An unprivileged process may map exactly its own ids, after denying setgroups. Plain os.write: this runs once
    # per program, and a Python file object costs four more system calls each.
    for path, text in (("/proc/self/setgroups", "deny"), ("/proc/self/uid_map", f"{inside} {uid} 1"),
                       ("/proc/self/gid_map", f"{inside} {gid} 1")):
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)

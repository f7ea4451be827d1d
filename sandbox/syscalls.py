"""The Linux system calls the sandbox needs that Python 3.11's os module lacks (unshare, mount, mount_setattr, prctl).

Stdlib only: this file is imported by the fork server, which runs as a plain script under any interpreter.
"""
import ctypes
import os
import struct

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
# Typed once, so that a call converts plain ints instead of building ctypes objects: every forked program makes
# these calls, and each Python object a fresh fork touches costs it a copied page.
_libc.unshare.argtypes = [ctypes.c_int]
_libc.unshare.restype = ctypes.c_int
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.prctl.restype = ctypes.c_int

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38

MNT_DETACH = 0x2

# mount_setattr(2) (Linux 5.12) has the same number on every architecture (the unified syscall table).
_SYS_MOUNT_SETATTR = 442
_AT_FDCWD = -100
_AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2


def _check(ret, what):
    if ret == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    _check(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
           f"mount {fstype or source} on {target}")


def umount(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(target.encode(), ctypes.c_int(flags)), f"umount {target}")


def make_tree_readonly(path: str = "/") -> None:
    """Make every mount under path read-only and nosuid, in one call (mount_setattr with AT_RECURSIVE).

    Falls back to remounting each mount of /proc/self/mountinfo on kernels older than 5.12.
    """
    attr = struct.pack("QQQQ", MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, 0, 0, 0)
    buf = ctypes.create_string_buffer(attr, len(attr))
    ret = _libc.syscall(ctypes.c_long(_SYS_MOUNT_SETATTR), ctypes.c_int(_AT_FDCWD), path.encode(),
                        ctypes.c_uint(_AT_RECURSIVE), buf, ctypes.c_size_t(len(attr)))
    if ret == 0:
        return
    if ctypes.get_errno() != 38:  # anything but ENOSYS is a real failure
        _check(-1, f"mount_setattr {path}")
    for mount_point in mounts_under(path):
        try:
            mount(None, mount_point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID)
        except OSError:
            pass  # e.g. a mount shadowed by another one: its covering mount is remounted instead


def mounts_under(path: str) -> list[str]:
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == path or point.startswith(path.rstrip("/") + "/"):
                points.append(point)
    return points


_pylib = ctypes.PyDLL(None)  # a PyDLL call keeps the GIL held across the call, so the clone child owns it too
_pylib.syscall.restype = ctypes.c_long
_SYS_CLONE = {"x86_64": 56, "aarch64": 220}.get(os.uname().machine)


def fork_into(flags: int) -> int:
    """fork(), but the child starts in new namespaces (e.g. as PID 1 of a new PID namespace).

    os.fork plus unshare(CLONE_NEWPID) works only once per process; a raw clone works every time. The child skips
    Python's after-fork hooks, which is fine for a single-threaded caller whose child only forks again (os.fork
    runs the hooks there, reseeding random for the program). Returns 0 in the child, the child's pid in the parent.
    """
    if _SYS_CLONE is None:
        raise OSError(38, f"clone: unsupported architecture {os.uname().machine}")
    pid = _pylib.syscall(ctypes.c_long(_SYS_CLONE), ctypes.c_ulong(flags | 17), None, None, None, None)  # 17: SIGCHLD
    return _check(pid, "clone")


def prctl(option: int, arg: int) -> None:
    _check(_libc.prctl(option, arg, 0, 0, 0), "prctl")


def sethostname(name: str) -> None:
    _check(_libc.sethostname(name.encode(), ctypes.c_size_t(len(name))), "sethostname")

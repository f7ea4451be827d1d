"""Hostile programs: each is contained, the host is unharmed, nothing is left running, and the sandbox keeps working.

Limits are small so that every case ends quickly; no test asserts on elapsed time.
"""
import os
import signal
import socket
import sys
import uuid
from pathlib import Path

import pytest

import sandbox


PROJECT = Path(__file__).resolve().parents[2]


def host_processes_named(name: str) -> list[int]:
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == name:
                pids.append(int(pid))
        except OSError:
            pass
    return pids


def docker_processes_named(name: str) -> list[str]:
    from sandbox import docker_backend
    found = []
    for c in docker_backend.client().containers.list(filters={"label": docker_backend.LABEL}):
        try:
            found += [" ".join(p) for p in c.top(ps_args="-eo pid,comm")["Processes"] if name in " ".join(p)]
        except Exception:
            pass  # a container being replaced
    return found


def leftovers(backend: str, name: str) -> list:
    return host_processes_named(name) if backend == "local" else docker_processes_named(name)


def set_name(name: str) -> str:
    """Program text that renames the current process (what /proc/PID/comm shows), to find it from the host."""
    return f"import ctypes; ctypes.CDLL(None).prctl(15, {name.encode()!r}, 0, 0, 0)\n"


def still_works(run):
    assert run("print('fine')").stdout == "fine\n"


def test_fork_bomb_is_contained(run, backend):
    name = "bomb" + uuid.uuid4().hex[:8]
    r = run(set_name(name) + "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
            timeout_s=2, cpu_s=1, max_processes=32)
    assert r.status == "timeout"
    assert leftovers(backend, name) == []
    still_works(run)


def test_memory_bomb_is_a_memory_verdict(run):
    r = run("chunks = []\nwhile True:\n    chunks.append(b'x' * (1 << 24))", memory_mb=128, timeout_s=20)
    assert r.status == "memory", (r.status, r.stderr[-300:])
    still_works(run)


def test_cpu_spin_stops_at_the_cpu_budget(run):
    r = run("while True:\n    pass", timeout_s=60, cpu_s=1)
    assert r.status == "timeout"
    assert r.exit_code == -signal.SIGXCPU  # stopped by its CPU budget, not by the (generous) wall limit


def test_sleep_forever_stops_at_the_wall_limit(run):
    r = run("import time\ntime.sleep(10_000)", timeout_s=1, cpu_s=1)
    assert r.status == "timeout" and r.exit_code is None


def test_setsid_double_fork_daemon_dies_with_the_run(run, backend):
    name = "daemon" + uuid.uuid4().hex[:8]
    r = run("import os, time\n"
            "if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            f"        {set_name(name).strip()}\n        time.sleep(10_000)\n    os._exit(0)\n"
            "os.wait()\nprint('parent done')", timeout_s=10)
    assert (r.status, r.stdout) == ("ok", "parent done\n")
    assert leftovers(backend, name) == []


def test_writes_outside_the_work_dir_fail(run):
    target = PROJECT / f"pwned-{uuid.uuid4().hex[:8]}"
    r = run("import os\nresults = []\n"
            f"for path in ['/etc/pwned', '/usr/pwned', {str(target)!r}, '/pwned']:\n"
            "    try:\n        open(path, 'w').write('x')\n        results.append('wrote ' + path)\n"
            "    except OSError:\n        results.append('denied')\n"
            "open('ok.txt', 'w').write('fine')\nprint(results)")
    assert r.status == "ok", r.stderr
    assert "wrote" not in r.stdout
    assert not target.exists() and not Path("/etc/pwned").exists() and not Path("/pwned").exists()


def test_host_home_project_and_caller_secrets_are_invisible(run, secret):
    marker = PROJECT / "tests" / "sandbox" / f".secret-{uuid.uuid4().hex[:8]}"
    marker.write_text(secret)
    try:
        r = run("import os\nout = [str(dict(os.environ))]\n"
                f"for path in [{str(marker)!r}, '/root/.bash_history', '/proc/1/environ', '/proc/self/environ']:\n"
                "    try:\n        out.append(open(path, 'rb').read().decode(errors='replace'))\n"
                "    except OSError:\n        pass\nprint(out)")
    finally:
        marker.unlink()
    assert r.status == "ok", r.stderr
    assert secret not in r.stdout


def test_cannot_connect_to_a_listener_on_host_loopback(run):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        r = run("import socket\ntry:\n"
                f"    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n    print('connected')\n"
                "except OSError as e:\n    print('blocked', e.errno)")
        assert r.status == "ok" and r.stdout.startswith("blocked"), r.stdout
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()


def test_a_gigabyte_of_stdout_hits_the_output_cap(run):
    r = run("import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(1024):\n    sys.stdout.write(chunk)",
            max_output_bytes=1 << 20, timeout_s=30)
    assert r.status == "output_limit"
    assert len(r.stdout) <= 1 << 20


def test_closed_stdout_is_the_programs_problem(run):
    r = run("import os\nos.close(1)\nprint('into the void')")
    assert r.status in ("ok", "failed")
    still_works(run)


def test_killing_its_parent_changes_nothing(run):
    r = run("import os, signal\ntry:\n    os.kill(os.getppid(), signal.SIGKILL)\nexcept OSError:\n    pass\n"
            "print('still here')")
    assert (r.status, r.stdout) == ("ok", "still here\n")  # its parent is PID 1 of its namespace: immune from inside
    still_works(run)


def test_signals_are_failures_with_the_signal_number(run):
    r = run("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)")
    assert (r.status, r.exit_code) == ("failed", -15)


def test_huge_files_are_refused(run):
    r = run("with open('big', 'wb') as f:\n    for _ in range(1024):\n        f.write(b'x' * (1 << 20))",
            max_file_mb=8, timeout_s=20)
    assert r.status == "failed" and "File too large" in r.stderr, r.stderr[-300:]
    still_works(run)


def test_proc_shows_no_host_processes(run):
    r = run("import os\nprint(len([p for p in os.listdir('/proc') if p.isdigit()]))")
    assert r.status == "ok"
    assert int(r.stdout) <= 4  # init, the program (and, in a container, its runner and `ps`-free init)


# Runs reuse warm isolation (a local slot, a docker container): nothing of one run may reach the next.

def lent_to_programs(backend) -> list[str]:
    """What a run's empty /tmp still shows: the way down to a virtualenv that lives under /tmp (a clone there), whose
    site-packages programs are lent read-only. Nothing of another run."""
    if backend != "local":
        return []
    import importlib.util
    spec = importlib.util.spec_from_file_location("isolation_paths", Path(sandbox.__file__).with_name("isolation.py"))
    sys.path.insert(0, str(Path(sandbox.__file__).parent))  # the fork server imports it as a script beside syscalls
    try:
        isolation = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(isolation)
    finally:
        sys.path.pop(0)
    return sorted({Path(p).relative_to(isolation.WORKDIR).parts[0] for p in isolation.interpreter_paths()
                   if p.startswith(isolation.WORKDIR + "/")})


def test_files_of_a_run_are_gone_at_the_next(run, backend):
    r = run("import os\nopen('left.txt', 'w').write('x')\nos.makedirs('a/b/c')\nopen('a/b/c/deep', 'w').write('y')\n"
            "if os.path.isdir('/dev/shm'):\n    open('/dev/shm/seg', 'w').write('z')")
    assert r.status == "ok", r.stderr
    r = run("import os\nprint(sorted(os.listdir('.')), os.listdir('/dev/shm') if os.path.isdir('/dev/shm') else [])")
    assert (r.status, r.stdout) == ("ok", f"{lent_to_programs(backend)} []\n"), r.stderr


def test_a_tree_too_deep_to_walk_does_not_survive_either(run, backend):
    r = run("import os\nfor _ in range(3000):\n    os.mkdir('d')\n    os.chdir('d')\nprint('deep')", timeout_s=30)
    assert (r.status, r.stdout) == ("ok", "deep\n"), r.stderr[-300:]
    r = run("import os\nprint(sorted(os.listdir('.')))")
    assert (r.status, r.stdout) == ("ok", f"{lent_to_programs(backend)}\n"), r.stderr


def test_system_v_shared_memory_does_not_outlive_its_run(run):
    shmget = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
              "print(libc.shmget(0x5eed, 4096, 0o1666))\n")  # IPC_CREAT | 0666
    assert run(shmget).status == "ok"
    r = run("print(open('/proc/sysvipc/shm').read().count('\\n') - 1)")
    assert (r.status, r.stdout) == ("ok", "0\n"), r.stderr


def test_consecutive_runs_have_their_own_uids(run, backend):
    if backend == "docker":
        pytest.skip("the docker backend runs every program as one unprivileged user of its container")
    uids = {run("import os\nprint(os.getuid())").stdout for _ in range(3)}
    assert len(uids) == 3


def test_memory_limits_follow_each_run(run):
    assert run("x = bytearray(200 << 20)", memory_mb=64, timeout_s=20).status == "memory"
    r = run("x = bytearray(200 << 20)\nprint(len(x) >> 20)", memory_mb=512, timeout_s=20)
    assert (r.status, r.stdout) == ("ok", "200\n"), r.stderr[-300:]
    assert run("x = bytearray(200 << 20)", memory_mb=64, timeout_s=20).status == "memory"

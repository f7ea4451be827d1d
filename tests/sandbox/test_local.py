"""The local backend's own machinery: what its programs inherit from the slot, and how run_many talks to the server."""
import json
import os
import re
import socket
import subprocess
import sys
import shutil
import tempfile
import textwrap
from pathlib import Path

import pytest

import sandbox
from sandbox import local

PROJECT = Path(__file__).resolve().parents[2]


def test_programs_cannot_gain_privileges_through_exec():
    r = sandbox.run("print([l for l in open('/proc/self/status') if l.startswith('NoNewPrivs')][0].split()[1])")
    assert (r.status, r.stdout) == ("ok", "1\n"), r.stderr


def test_signals_the_caller_ignores_are_at_their_default_in_programs():
    # Ignored dispositions survive exec (nohup ignores SIGHUP): a fresh fork server started from such a caller.
    program = ("import signal\nprint([signal.getsignal(s) == signal.SIG_DFL for s in (signal.SIGHUP, signal.SIGTERM)],"
               " signal.getsignal(signal.SIGINT) is signal.default_int_handler)")
    caller = ("import signal, sandbox\n"
              "signal.signal(signal.SIGHUP, signal.SIG_IGN)\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
              f"r = sandbox.run({program!r})\nprint(r.status, r.stdout, r.stderr)")
    out = subprocess.run([sys.executable, "-c", caller], cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok [True, True] True", out.stdout + out.stderr


def test_a_caller_without_stderr_still_gets_results():
    # Programs' streams are built in each slot over its fds 1 and 2: a server started without fd 2 must cope.
    caller = ("import os, sandbox\nos.close(2)\n"
              "assert os.open(os.devnull, os.O_RDONLY) == 2  # close-on-exec: the fork server starts without fd 2\n"
              "r = sandbox.run(\"import sys; print(sys.stdin.read()); print('e', file=sys.stderr)\", stdin='x')\n"
              "print(r.status, repr(r.stdout), repr(r.stderr))")
    out = subprocess.run([sys.executable, "-c", caller], cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok 'x\\n' 'e\\n'", out.stdout


def test_standard_streams_are_what_a_script_gets():
    # Made once per slot: stdout and stderr must still know they are pipes (no seeking), stdin a seekable file.
    r = sandbox.run("import io, sys\nout = []\nfor s in (sys.stdout, sys.stderr):\n"
                    "    try:\n        s.tell()\n        out.append('tell')\n"
                    "    except io.UnsupportedOperation:\n        out.append('unsupported')\n"
                    "first = sys.stdin.read()\nsys.stdin.seek(0)\n"
                    "print(out, first + sys.stdin.read(), sys.stdout is sys.__stdout__, sys.stdout.encoding,"
                    " sys.stderr.errors, sys.stderr.line_buffering)", stdin="abc")
    assert (r.status, r.stdout) == ("ok", "['unsupported', 'unsupported'] abcabc True utf-8 backslashreplace True\n"), \
        r.stderr


def test_a_failure_before_the_program_starts_is_an_infra_error_with_its_reason():
    r = sandbox.run("print('never')", files={"../escape.txt": "x"})
    assert r.status == "infra_error" and "leaves the work directory" in r.stderr, (r.status, r.stderr)


def test_run_many_gives_every_program_the_same_stdin_and_files():
    results = sandbox.run_many(["import sys, helper\nprint(sys.stdin.read(), helper.X)"] * 3, stdin="in",
                               files={"helper.py": "X = 7\n"})
    assert [(r.status, r.stdout) for r in results] == [("ok", "in 7\n")] * 3, [r.stderr for r in results]


def test_run_many_gives_up_on_a_run_whose_supervisor_never_answers(monkeypatch):
    silent = []

    def submit_to_nobody(self, request):
        ours, theirs = socket.socketpair()
        silent.append(theirs)  # held open, never written: the answer never comes
        return ours

    monkeypatch.setattr(local.ForkServer, "submit", submit_to_nobody)
    monkeypatch.setattr(local, "LOST_RUN_S", 0.0)
    results = sandbox.run_many(["print(1)"], timeout_s=0.2)
    assert results[0].status == "infra_error"
    assert len(silent) == local.INFRA_RETRIES  # the first try, then the retries


@pytest.mark.skipif(os.geteuid() != 0, reason="runs get uids of their own (which tell their slot) only as root")
def test_a_slot_is_replaced_after_its_share_of_runs_and_answers_every_one(monkeypatch):
    # The slot counts its runs: it says "idle" before each answer, except after its last, when it says "done" after
    # the answer (the server kills it on that word). A run's uid tells its slot (millions) and the slot's run count.
    runs_per_slot = int(re.search(r"^RUNS_PER_SLOT = (\d+)", local.FORKSERVER.read_text(), re.M).group(1))
    retried = []
    monkeypatch.setattr(local, "_run_with_retries", lambda *args, **kw: retried.append(args))
    results = sandbox.run_many(["import os\nprint(os.getuid())"] * (runs_per_slot + 1), workers=1)
    assert retried == [] and {r.status for r in results} == {"ok"}
    uids = [int(r.stdout) for r in results]
    first_slot = [uid for uid in uids if uid // 1_000_000 == uids[0] // 1_000_000]
    assert first_slot[-1] % 1_000_000 == runs_per_slot - 1  # its last run was its share, then another slot took over
    assert uids[-1] // 1_000_000 != uids[0] // 1_000_000


def test_a_clone_under_tmp_lends_its_virtualenv_packages_read_only_and_nothing_else():
    """A clone under /tmp with its virtualenv inside (`git clone ... /tmp/x; make test`): the project is hidden and
    each run gets an empty /tmp, yet programs must import the virtualenv's packages, read-only, across runs of one
    slot, and see nothing else of the virtualenv or the clone."""
    root = Path(tempfile.mkdtemp(prefix="codelm-clone-", dir="/tmp"))
    try:
        clone = root / "clone"
        shutil.copytree(PROJECT / "sandbox", clone / "sandbox", ignore=shutil.ignore_patterns("__pycache__"))
        (clone / "secret.txt").write_text("not for programs")
        venv = clone / ".venv"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        site = next(venv.glob("lib/python3*/site-packages"))
        (site / "probe_pkg.py").write_text("VALUE = 42\n")
        program = textwrap.dedent(f"""
            import os, probe_pkg
            print(probe_pkg.VALUE, os.path.exists({str(clone / 'secret.txt')!r}), os.listdir({str(venv)!r}))
            try:
                open({str(site / 'planted.py')!r}, "w")
                print("writable")
            except OSError:
                print("read-only")
            open("scratch.txt", "w").write("x")  # the run's own /tmp stays writable
        """)
        driver = textwrap.dedent(f"""
            import json, sandbox
            for _ in range(3):  # later runs of the same slot see the packages too, after /tmp was emptied
                r = sandbox.run({program!r}, timeout_s=20)
                print(json.dumps([r.status, r.stdout, r.stderr]))
        """)
        out = subprocess.run([str(venv / "bin" / "python"), "-c", driver], cwd=clone, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        for line in out.stdout.splitlines():
            status, stdout, stderr = json.loads(line)
            assert status == "ok", stderr
            assert stdout.splitlines() == ["42 False ['lib']", "read-only"]
        assert not (site / "planted.py").exists()
    finally:
        shutil.rmtree(root)

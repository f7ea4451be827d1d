"""Ordinary programs: what a correct sandbox reports for them, on both backends."""
import json
import subprocess
import sys

import pytest

import sandbox


def test_ok_prints_and_exits_zero(run):
    r = run("print('hello')")
    assert (r.status, r.exit_code, r.stdout) == ("ok", 0, "hello\n")
    assert r.wall_s >= 0 and r.cpu_s >= 0
    assert set(r.to_json()) == {"status", "exit_code", "stdout", "stderr", "wall_s", "cpu_s"}


def test_exit_codes_and_exceptions_are_failed(run):
    assert (run("import sys; sys.exit(3)").status, run("import sys; sys.exit(3)").exit_code) == ("failed", 3)
    r = run("raise ValueError('boom')")
    assert r.status == "failed" and r.exit_code == 1 and "ValueError: boom" in r.stderr
    r = run("import sys; sys.exit('bye')")
    assert (r.status, r.exit_code, r.stderr.strip()) == ("failed", 1, "bye")


def test_name_is_not_main(run):
    r = run("print(__name__)\nif __name__ == '__main__':\n    print('main block ran')")
    assert r.status == "ok" and r.stdout == "__sandbox__\n"


def test_stdin_and_files(run):
    r = run("import sys, helper\nprint(sys.stdin.read().upper(), helper.X, open('data.bin', 'rb').read())",
            stdin="abc", files={"helper.py": "X = 42\n", "data.bin": b"\x00\x01"})
    assert r.status == "ok", r.stderr
    assert r.stdout == "ABC 42 b'\\x00\\x01'\n"


def test_import_numpy_under_memory_limit(backend):
    if backend == "docker":
        pytest.skip("the sandbox image carries only the standard library")
    r = sandbox.run("import numpy as np; print(int(np.arange(10).sum()))", memory_mb=512)
    assert (r.status, r.stdout) == ("ok", "45\n"), r.stderr


def test_run_many_preserves_order_and_reports_each(backend):
    seen = []
    programs = [f"print({i})" for i in range(12)] + ["raise SystemExit(2)"]
    results = sandbox.run_many(programs, backend=backend, on_result=lambda i, r: seen.append(i))
    assert [r.stdout for r in results[:12]] == [f"{i}\n" for i in range(12)]
    assert results[12].status == "failed"
    assert sorted(seen) == list(range(13))


def test_unknown_backend_is_an_error():
    with pytest.raises(ValueError, match="unknown sandbox backend"):
        sandbox.run("pass", backend="nope")


def test_cli_run_prints_one_json_result(tmp_path):
    program = tmp_path / "p.py"
    program.write_text("print(6 * 7)")
    out = subprocess.run([sys.executable, "-m", "sandbox", "run", str(program), "--timeout", "5"],
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    assert (result["status"], result["stdout"]) == ("ok", "42\n")


def test_cli_check_reports_isolation():
    out = subprocess.run([sys.executable, "-m", "sandbox", "check"], capture_output=True, text=True)
    assert "own PID namespace" in out.stdout
    assert out.returncode == 0, out.stdout


def test_more_concurrent_runs_than_slots_all_get_their_turn():
    # The local fork server keeps at most 64 slots; the runs beyond wait for one to come free.
    programs = [f"import time\ntime.sleep(0.2)\nprint({i})" for i in range(80)]
    results = sandbox.run_many(programs, workers=80, timeout_s=30)
    assert [(r.status, r.stdout) for r in results] == [("ok", f"{i}\n") for i in range(80)]

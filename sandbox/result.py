"""What a run produced, the limits it ran under, and the one error the sandbox raises."""
from dataclasses import asdict, dataclass

STATUSES = ("ok", "failed", "timeout", "memory", "output_limit", "infra_error")


class SandboxUnavailable(RuntimeError):
    """The requested backend cannot isolate programs on this host (no namespaces, no Docker engine, no image)."""


@dataclass
class Result:
    status: str  # one of STATUSES: "ok" is exit 0; "failed" a non-zero exit or a signal; "infra_error" is ours
    exit_code: int | None  # None when the sandbox killed the run (timeout, output_limit) or never ran it
    stdout: str
    stderr: str
    wall_s: float
    cpu_s: float  # user + system time of every process of the run
    step: str = ""  # a Program's (sandbox/steps.py): the step this result is from, e.g. "build"; "" for Python

    def to_json(self) -> dict:
        data = asdict(self)
        if not data["step"]:
            del data["step"]  # a Python program's result keeps its six fields
        return data

    @classmethod
    def from_json(cls, data: dict) -> "Result":
        return cls(**{k: data[k] for k in ("status", "exit_code", "stdout", "stderr", "wall_s", "cpu_s")},
                   step=data.get("step", ""))

    @classmethod
    def infra_error(cls, message: str) -> "Result":
        return cls("infra_error", None, "", message, 0.0, 0.0)


@dataclass
class Limits:
    """Per-run limits; run() takes the same names as keyword arguments."""
    timeout_s: float = 10.0  # wall clock; catches programs that sleep or block
    cpu_s: float | None = None  # CPU seconds (None: same as timeout_s); the budget that stays fair under load
    memory_mb: int = 1024
    max_output_bytes: int = 1 << 20  # stdout + stderr together
    max_processes: int = 128  # processes and threads
    max_file_mb: int = 64  # largest file the program may write
    max_open_files: int = 256

    def to_json(self) -> dict:
        return asdict(self)

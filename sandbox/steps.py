"""Programs that are not Python source: files plus steps (a build, then a run), each an executable with its own limits.

    from sandbox import Program, Step, run
    program = Program(files={"main.c": source}, steps=[
        Step("build", ["gcc", "main.c", "-o", "main"], timeout_s=60, cpu_s=30, memory_mb=2048),
        Step("run", ["./main"])])                     # limits not given: those passed to run()
    result = run(program, cpu_s=3)                    # result.step says which step the result is from

The steps run one after another in the same private work directory (a tmpfs: build outputs never touch a disk), as
the same per-run uid, each supervised and killed like a Python program; the first step that does not end "ok" ends
the run, and its result is the run's (a compile error is `status="failed", step="build"`). Only the last step gets
stdin. Each step's argv is looked up on the sandbox's PATH, never the caller's, and runs with the sandbox's scrubbed
environment plus `env`.
"""
from dataclasses import dataclass, field
from typing import Any

STEP_LIMITS = ("timeout_s", "cpu_s", "memory_mb", "max_output_bytes", "max_processes", "max_file_mb",
               "max_open_files", "address_space_mb")


@dataclass
class Step:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    # None: the limit passed to run() (see Limits). A build step sets its own: compilers need more than programs.
    timeout_s: float | None = None
    cpu_s: float | None = None
    memory_mb: int | None = None
    max_output_bytes: int | None = None
    max_processes: int | None = None
    max_file_mb: int | None = None
    max_open_files: int | None = None
    # Only where no cgroup bounds memory (RLIMIT_AS is the fallback): None keeps the default (about twice memory_mb),
    # 0 sets none. The JVM, Node and Go reserve gigabytes of address space they never touch, so their steps bound the
    # heap with the runtime's own flag and ask for 0 here.
    address_space_mb: int | None = None

    def to_json(self) -> dict:
        spec = {"name": self.name, "argv": list(self.argv), "env": dict(self.env)}
        spec.update({k: getattr(self, k) for k in STEP_LIMITS if getattr(self, k) is not None})
        return spec


@dataclass
class Program:
    files: dict[str, str | bytes]
    steps: list[Step]
    # toolchains.program's arguments, so that a backend whose toolchains live elsewhere (the docker backend's image)
    # can ask for the same program's steps for its own; None: the steps are run as given, on any backend
    recipe: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if not self.steps:
            raise ValueError("a Program needs at least one step")
        names = [s.name for s in self.steps]
        if len(set(names)) != len(names):
            raise ValueError(f"step names must differ: {names}")


"""Run untrusted generated programs safely, fast, with verdicts that do not depend on load.

    from sandbox import run, run_many
    result = run("print(1 + 1)", timeout_s=5, cpu_s=2)       # Result(status="ok", exit_code=0, stdout="2\n", ...)
    results = run_many(programs, on_result=lambda i, r: ...)  # order preserved, all cores busy

`program` is Python source (or a Program: files plus build and run steps of any language, see steps.py and
toolchains.py), run as a module named "__sandbox__" (never "__main__") by the caller's interpreter (or
`python=`). Backends: "local" (default; a fork server with namespaces and cgroups, see local.py/forkserver.py) and
"docker" (warm containers, see docker_backend.py). Stdlib only (plus the docker SDK for that backend): no torch, no
codelm, so it runs anywhere. `python -m sandbox check` says which isolation features work on this host.
"""
import os
from concurrent.futures import ThreadPoolExecutor, as_completed

from .result import STATUSES, Limits, Result, SandboxUnavailable
from .steps import Program, Step

__all__ = ["run", "run_many", "Result", "Limits", "SandboxUnavailable", "STATUSES", "Program", "Step"]
BACKENDS = ("local", "docker")


def run(program: "str | Program", *, stdin: str | None = None, files: dict[str, str | bytes] | None = None,
        timeout_s: float = 10.0, cpu_s: float | None = None, memory_mb: int = 1024,
        max_output_bytes: int = 1 << 20, backend: str = "local", python: str | None = None, **more) -> Result:
    """Run one program. More limits (see Limits) and allow_unisolated (local) may be passed as keywords."""
    limits = dict(timeout_s=timeout_s, cpu_s=cpu_s, memory_mb=memory_mb, max_output_bytes=max_output_bytes, **more)
    if backend == "local":
        from . import local
        return local.run(program, stdin=stdin, files=files, python=python, **limits)
    if backend == "docker":
        from . import docker_backend
        return docker_backend.run(program, stdin=stdin, files=files, **limits)
    raise ValueError(f"unknown sandbox backend {backend!r}; choose one of {BACKENDS}")


def run_many(programs: "list[str | Program]", *, workers: int | None = None, on_result=None, backend: str = "local",
             **limits) -> list[Result]:
    """Run programs concurrently; results in input order. on_result(index, result) is called as each finishes."""
    if not programs:
        return []
    # Two per core: a run spends part of its life in the kernel (fork, namespaces) or waiting on its supervisor.
    workers = workers or 2 * (os.cpu_count() or 1)
    if backend == "local":
        from . import local
        local.get_server(limits.get("python"), limits.get("allow_unisolated"))  # fail fast, and start it once
        return local.run_many(programs, workers, on_result, **limits)  # one thread, not one per run
    results: list[Result | None] = [None] * len(programs)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox") as pool:
        futures = {pool.submit(run, p, backend=backend, **limits): i for i, p in enumerate(programs)}
        for future in as_completed(futures):
            i = futures[future]
            results[i] = future.result()
            if on_result is not None:
                on_result(i, results[i])
    return results

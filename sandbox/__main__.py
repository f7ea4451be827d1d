"""python -m sandbox run FILE [--timeout S] [--cpu S] [--memory MB] [--backend local|docker]   (one JSON result)
python -m sandbox run main.cpp --language cpp          (cpp|java|js|go|rust: built and run, see toolchains.py)
python -m sandbox check                                                   (what isolates here; which toolchains)"""
import argparse
import json
import sys

from . import SandboxUnavailable, run

# Each probe prints what a program could see or do; "isolated" is the answer a sandbox must give.
PROBES = {
    "own PID namespace (no host processes in /proc)":
        ("import os; print(len([p for p in os.listdir('/proc') if p.isdigit()]) <= 3)", "True"),
    "no network (loopback down, no interfaces)":
        ("import socket\ntry:\n socket.create_connection(('127.0.0.1', 22), timeout=1); print(False)\n"
         "except OSError as e: print(e.errno in (101, 99, 113))", "True"),
    "read-only filesystem outside the work dir":
        ("import os\ntry:\n open('/usr/.sandbox_probe', 'w'); print(False)\nexcept OSError: print(True)", "True"),
    "host home directories hidden":
        # Only the interpreter's own tree (e.g. /root/.pyenv) may show through: no dotfiles, no other directories.
        ("import os, sys\nseen = [os.path.join(d, f) for d in ('/root', '/home') if os.path.isdir(d) for f in os.listdir(d)]\n"
         "print(all(sys.base_prefix.startswith(p) or sys.prefix.startswith(p) for p in seen))", "True"),
    "unprivileged (uid is not 0 on the host)":
        ("import os; print(os.getuid() != 0 or open('/proc/self/uid_map').read().split()[1] != '0')", "True"),
    "private writable work dir":
        ("import os; open('probe', 'w').write('x'); print(os.getcwd() in ('/tmp', '/work'))", "True"),
}


def check(backend: str) -> int:
    print(f"backend: {backend}")
    if backend == "local":
        from . import local
        try:
            server = local.get_server(allow_unisolated=False)
        except SandboxUnavailable as e:
            print(f"  UNAVAILABLE: {e}")
            return 1
        for name, value in server.hello["features"].items():
            print(f"  {name}: {value}")
        for warning in server.hello.get("warnings", []):
            print(f"  warning: {warning}")
    failures = 0
    for name, (program, expected) in PROBES.items():
        try:
            result = run(program, backend=backend, timeout_s=10)
        except SandboxUnavailable as e:
            print(f"  UNAVAILABLE: {e}")
            return 1
        ok = result.stdout.strip() == expected
        failures += not ok
        print(f"  [{'ok' if ok else 'NO'}] {name}" + ("" if ok else f"  ({result.status}: {result.stderr[-200:]})"))
    if backend == "local":
        from . import toolchains
        for language in toolchains.LANGUAGES:
            print(f"  toolchain {language}: {toolchains.missing(language) or 'ready'}")
    return 1 if failures else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="run a Python file in the sandbox, print the Result as JSON")
    p_run.add_argument("file")
    p_run.add_argument("--timeout", type=float, default=10.0, help="wall-clock limit, seconds")
    p_run.add_argument("--cpu", type=float, default=None, help="CPU-time limit, seconds (default: --timeout)")
    p_run.add_argument("--memory", type=int, default=1024, help="memory limit, MB")
    p_run.add_argument("--backend", choices=("local", "docker"), default="local")
    p_run.add_argument("--stdin", default=None, help="file whose contents become the program's stdin")
    p_run.add_argument("--language", choices=("python", "cpp", "java", "js", "go", "rust"), default="python",
                       help="the file's language (default python); others are built first (toolchains.py)")
    p_check = sub.add_parser("check", help="report which isolation features work on this host")
    p_check.add_argument("--backend", choices=("local", "docker"), default="local")
    args = parser.parse_args(argv)
    if args.command == "check":
        return check(args.backend)
    with open(args.file) as f:
        program = f.read()
    if args.language != "python":
        from . import toolchains
        program = toolchains.program(args.language, program, memory_mb=args.memory)
    stdin = open(args.stdin).read() if args.stdin else None
    try:
        result = run(program, stdin=stdin, timeout_s=args.timeout, cpu_s=args.cpu, memory_mb=args.memory,
                     backend=args.backend)
    except SandboxUnavailable as e:
        print(str(e), file=sys.stderr)
        return 2
    print(json.dumps(result.to_json()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

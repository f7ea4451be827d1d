"""How each language is built and run in the sandbox: C++, Java, JavaScript, Go and Rust, from Debian's toolchains.

    from sandbox import run, toolchains
    program = toolchains.program("cpp", "int main(){}")           # a Program (steps.py): build, then run
    result = run(program, cpu_s=3)                                 # the run step's limits: run()'s
    toolchains.missing("rust")                                     # None, or why the language cannot run here

Toolchains are the host's (or the Docker image's): g++, default-jdk-headless, nodejs, golang-go, rustc, found on the
sandbox's PATH and visible read-only inside it. A build step has its own limits, larger than a run's (BUILD below):
g++ with <iostream> peaks near 150 MB and a CPU second, javac is a JVM (~300 MB, several threads), `go test -c`
links a ~10 MB test binary with many threads, rustc with regex linked in needs several hundred MB. The CPU budget, not
the wall clock, is what bounds a build under load (wall limits are generous, as for programs).

Processes: RLIMIT_NPROC counts threads per uid; every run has a uid of its own, so a run's ceiling is its own. Builds
get 256 (the go command runs compile and link processes of many threads each), runs the caller's (128 by default: a
JVM with the serial GC starts ~20 threads). Build outputs (objects, binaries, Go's cache copy) live in the run's
tmpfs work dir, sized like the largest step's memory and charged to its cgroup, and vanish with the run.

Memory: where a cgroup exists (these machines), it bounds every step. Without one the fallback is RLIMIT_AS, which the
JVM cannot start under (measured: `java -Xmx512m -version` dies under a 2 GB RLIMIT_AS, the default for a 1 GB run;
V8 and the JVM reserve address space up front); their steps set no RLIMIT_AS and bound their heap with their own flag
(-Xmx, --max-old-space-size) instead. Go (runs under 2 GB, measured) and native code keep RLIMIT_AS.

Warm toolchain reuse, and why each is safe (nothing written by one program is ever read by another):
  C++   a precompiled header of the common standard headers (COMMON_CPP_HEADERS), built once, read-only; used only when
        the caller says its program includes those headers anyway (cpp_pch=True), so semantics do not change.
  Rust  rand, regex and md5 compiled once from Debian's crate sources (librust-*-dev) into rlibs, read-only; each
        program is one `rustc --test` against them, never a cargo project (no shared target dir).
  Go    a build cache made once by compiling the test helpers, copied into each program's own tmpfs (a Go build
        cache must be writable; a shared writable one would let programs see each other's outputs). Both builds use
        -trimpath, so that the cache's keys do not depend on the directory a package was compiled in.
  Java  no warm JVM: a JVM that ran one program keeps its classes, statics and threads, so every program (and
        javac) starts its own. Start-up is cut with flags instead (the serial GC, C1 only, no perf-data file), and
        javac's with a class-data-sharing archive of the JDK's own compiler classes, dumped once by compiling a
        trivial file of ours (read-only, mapped by every javac; no program's class is ever in it: javac only
        parses them). -40% javac CPU, measured. Programs run on the JDK's default archive only.
The warm artifacts live under cache_root() (CODELM_TOOLCHAIN_CACHE, default /var/tmp/codelm-toolchains-UID), which the
local backend keeps visible, read-only, in its namespaces. They are built by the caller's process, not by programs.

The docker backend runs the same programs in the Dockerfile's `sandbox-lang` image, whose toolchains are its own: the
same warm artifacts are built into the image (build_image, at IMAGE_ROOT, read-only like the rest of its root) when
the image is built, with fixed names, so that the caller needs no toolchain of its own to describe a program for it.
program(..., image=True) gives the steps for the image; sandbox.run(backend="docker") asks for them (Program.recipe).
Stdlib only.
"""
import hashlib
import os
import shutil
import subprocess
import threading
from pathlib import Path

from .steps import Program, Step

LANGUAGES = ("cpp", "java", "js", "go", "rust")
SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # local.SCRUBBED_ENV's
# Limits of a build step (see the docstring for why each is larger than a run's).
BUILD = dict(timeout_s=120.0, cpu_s=60.0, memory_mb=2048, max_processes=256, max_file_mb=256, max_open_files=1024,
             max_output_bytes=1 << 18)
EXECUTABLES = {"cpp": ["g++"], "java": ["javac", "java"], "js": ["node"], "go": ["go"], "rust": ["rustc"]}
DEBIAN_PACKAGES = {"cpp": "g++ libssl-dev", "java": "default-jdk-headless", "js": "nodejs", "go": "golang-go",
                   "rust": "rustc cargo librust-rand-dev librust-regex-dev librust-regex+default-dev librust-md5-dev"}
COMMON_CPP_HEADERS = ["stdlib.h", "algorithm", "math.h", "stdio.h", "vector", "string", "climits", "cstring",
                      "iostream"]
CPP_STD = "c++11"  # HumanEval-X's evaluator compiles with -std=c++11
JVM_FLAGS = ["-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-XX:-UsePerfData", "-Xshare:auto", "-Xss8m"]
JAVAC_FLAGS = [*JVM_FLAGS, "-Xmx512m"]
RUST_CRATES = {"rand": "0.8", "regex": "1", "md5": "0.7"}  # Debian bookworm's versions (HumanEval-X pins rand 0.4)
DEBIAN_CARGO_REGISTRY = "/usr/share/cargo/registry"
IMAGE_ROOT = "/opt/codelm-toolchains"  # the warm artifacts inside the sandbox-lang image (build_image)

_lock = threading.Lock()
_warm: dict = {}


def cache_root() -> Path:
    """Not under a home directory (the sandbox hides those) nor /tmp (a program's own tmpfs covers it): /var/tmp,
    one directory per user, refused unless it is ours and writable by us alone (it is shared with every user)."""
    root = Path(os.environ.get("CODELM_TOOLCHAIN_CACHE") or f"/var/tmp/codelm-toolchains-{os.geteuid()}")
    root.mkdir(mode=0o755, parents=True, exist_ok=True)
    info = root.stat()
    if info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise ToolchainError(f"{root}: the toolchain cache must be owned by uid {os.geteuid()} and writable only by "
                             f"it; remove it or set CODELM_TOOLCHAIN_CACHE")
    return root


def which(name: str) -> str | None:
    """The executable programs get: looked up on the sandbox's PATH, not the caller's."""
    return shutil.which(name, path=SANDBOX_PATH)


def missing(language: str) -> str | None:
    """None when `language` can be built and run here, else one line saying what is missing and how to install it."""
    if language not in LANGUAGES:
        raise ValueError(f"unknown language {language!r}; choose from {', '.join(LANGUAGES)}")
    absent = [exe for exe in EXECUTABLES[language] if which(exe) is None]
    if absent:
        return (f"{language}: {', '.join(absent)} not found on {SANDBOX_PATH} "
                f"(Debian: apt-get install {DEBIAN_PACKAGES[language]})")
    if language == "rust":
        try:
            rust_crates()
        except ToolchainError as e:
            return f"rust: {e}"
    return None


class ToolchainError(RuntimeError):
    """A warm artifact could not be built (e.g. Debian's crate sources are not installed)."""


# -- programs ------------------------------------------------------------------------------------------------------
def program(language: str, source: str, *, memory_mb: int = 1024, extra_files: dict | None = None,
            cpp_pch: bool = False, link: list[str] | None = None, go_module: dict | None = None,
            main_class: str = "Main", image: bool = False) -> Program:
    """One source file built and run. `source` is the whole program: for Go a package main _test.go file (run with
    `go test`), for Rust a file whose #[test] functions are run by the test harness, for Java Main.java, run
    as `java main_class`, for JavaScript a script.

    The build step has BUILD's limits; the run step takes those passed to run() (cpu_s, timeout_s, ...). memory_mb:
    the memory the run will get (pass the same to run()), which sizes the JVM's and Node's heap flags.
    cpp_pch: the program includes COMMON_CPP_HEADERS anyway, so the precompiled header may go first. link: extra
    linker flags for C++ (e.g. ["-lcrypto"]). go_module: {"go.mod": text, "vendor": directory (read-only, e.g. made with
    build_once), "warm_imports": packages to precompile into the warm cache} for Go imports (in the image: its own
    copy of the module, see build_image). image: the steps for the sandbox-lang image (the docker backend) instead
    of this host; the Program's recipe remembers the arguments, so that a backend can ask for its own.
    """
    recipe = dict(language=language, source=source, memory_mb=memory_mb, extra_files=extra_files, cpp_pch=cpp_pch,
                  link=link, go_module=go_module, main_class=main_class)
    warm = _ImageArtifacts() if image else _HostArtifacts()
    files = dict(extra_files or {})
    build = dict(BUILD)
    if language == "cpp":
        files["main.cpp"] = source
        flags = [f"-std={CPP_STD}", "-w"]
        header = warm.cpp_pch_header() if cpp_pch else None
        if header:
            flags += ["-include", header]
        steps = [Step("build", ["g++", *flags, "main.cpp", "-o", "main", *(link or [])], **build),
                 Step("run", ["./main"])]
    elif language == "java":
        files["Main.java"] = source
        heap = f"-Xmx{max(64, memory_mb // 2)}m"
        javac = ["javac", *(f"-J{f}" for f in JAVAC_FLAGS)]
        archive = warm.javac_archive()
        if archive:
            javac.append(f"-J-XX:SharedArchiveFile={archive}")
        steps = [Step("build", [*javac, "-encoding", "UTF-8", "-nowarn", "-d", ".", "Main.java"], address_space_mb=0,
                      **build),
                 Step("run", ["java", *JVM_FLAGS, heap, "-cp", ".", main_class], address_space_mb=0)]
    elif language == "js":
        files["main.js"] = source
        steps = [Step("run", ["node", f"--max-old-space-size={max(64, memory_mb // 2)}", "main.js"],
                      address_space_mb=0)]
    elif language == "go":
        # In a directory of its own: the go command ignores a go.mod at the root of $TMPDIR, the work dir.
        files["src/main_test.go"] = source
        module = go_module or {"go.mod": "module sandbox\n\ngo 1.18\n"}
        files["src/go.mod"] = module["go.mod"]
        cache, vendor = warm.go_cache(module), warm.go_vendor(module)
        # The cache and GOPATH in the run's own work dir (wherever that is: unisolated runs get a fresh temporary one).
        prepare = 'export GOCACHE="$PWD/.gocache" GOPATH="$PWD/.gopath"'
        if cache:
            prepare += ' && cp -r ' + _q(cache) + ' "$GOCACHE"'
        prepare += " && cd src"
        if vendor:
            prepare += " && ln -s " + _q(vendor) + " vendor"
        env = {"GOFLAGS": "-mod=vendor" if vendor else "-mod=mod", "GO111MODULE": "on", "GOPROXY": "off",
               "CGO_ENABLED": "0", "GOTOOLCHAIN": "local"}
        build_cmd = prepare + " && exec go test -c -trimpath -o ../main.test main_test.go"
        steps = [Step("build", ["sh", "-c", build_cmd], env=env, address_space_mb=0, **build),
                 Step("run", ["./main.test"], env={"GOMAXPROCS": "2"}, address_space_mb=0)]
    elif language == "rust":
        files["main.rs"] = source
        crates = warm.rust_crates()
        externs = [arg for name, path in crates["externs"].items() for arg in ("--extern", f"{name}={path}")]
        steps = [Step("build", ["rustc", "--edition", "2021", "--test", "-A", "warnings", "-C", "opt-level=0",
                                "-L", f"dependency={crates['deps']}", *externs, "main.rs", "-o", "main"], **build),
                 Step("run", ["./main", "--test-threads=1"])]
    else:
        raise ValueError(f"unknown language {language!r}; choose from {', '.join(LANGUAGES)}")
    return Program(files, steps, recipe=recipe)


def _q(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


class _HostArtifacts:
    """The warm artifacts of this host's toolchains, built on first use (below). Where this host cannot build one
    (its toolchain is missing: a caller that only uses the docker backend), the program is still described, without
    it: the recipe is what the docker backend uses, and a local run fails in its build step, as missing() says."""

    def cpp_pch_header(self) -> str | None:
        return _or_none(lambda: str(cpp_pch_header()))

    def javac_archive(self) -> str | None:
        return javac_archive()

    def rust_crates(self) -> dict:
        return _or_none(rust_crates) or {"deps": DEBIAN_CARGO_REGISTRY, "externs": {}}

    def go_cache(self, module: dict) -> str | None:
        return _or_none(lambda: str(go_cache(module)))

    def go_vendor(self, module: dict) -> str | None:
        return str(module["vendor"]) if module.get("vendor") else None


def _or_none(build):
    try:
        return build()
    except (ToolchainError, OSError):
        return None


class _ImageArtifacts:
    """The same artifacts in the sandbox-lang image, where build_image put them (fixed names: the image is built
    once and never changes under its containers)."""

    def cpp_pch_header(self) -> str:
        return f"{IMAGE_ROOT}/cpp-pch/common.h"

    def javac_archive(self) -> str | None:
        return f"{IMAGE_ROOT}/javac-cds/javac.jsa"

    def rust_crates(self) -> dict:
        root = f"{IMAGE_ROOT}/rust-crates"
        return {"deps": f"{root}/target/debug/deps", "externs": {name: f"{root}/lib{name}.rlib" for name in RUST_CRATES}}

    def go_cache(self, module: dict) -> str:
        return f"{IMAGE_ROOT}/go-cache/cache"

    def go_vendor(self, module: dict) -> str | None:
        # the image's own copy of the module's vendored packages; the program's go.mod must be that module's
        return f"{IMAGE_ROOT}/go-module/vendor" if module.get("vendor") else None


def build_image(root: str, go_module_dir: str | None = None, go_warm_imports: tuple[str, ...] = ()) -> None:
    """Inside the sandbox-lang image's build (the Dockerfile), as root: every warm artifact at `root` under the fixed
    names _ImageArtifacts uses, with the image's toolchains. go_module_dir: a go.mod and vendor.tar.gz (HumanEval-X's
    test modules, as the Rust crates are its tests' crates) to unpack and precompile with go_warm_imports."""
    import tarfile

    top = Path(root)
    top.mkdir(parents=True, exist_ok=True)
    for name, build in (("cpp-pch", _build_cpp_pch), ("javac-cds", _build_javac_archive),
                        ("rust-crates", _build_rust_crates)):
        (top / name).mkdir()
        build(top / name)
    deps = top / "rust-crates" / "target" / "debug" / "deps"
    for name in RUST_CRATES:  # the fixed names _ImageArtifacts gives rustc's --extern
        (top / "rust-crates" / f"lib{name}.rlib").symlink_to(_rlib(deps, name))
    module = {"go.mod": "module sandbox\n\ngo 1.18\n"}
    if go_module_dir:
        (top / "go-module").mkdir()
        with tarfile.open(Path(go_module_dir) / "vendor.tar.gz") as tar:
            # our own packaged data; the filter where this Python has it (bookworm's 3.11.2 does not)
            tar.extractall(top / "go-module", **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        module = {"go.mod": (Path(go_module_dir) / "go.mod").read_text(), "vendor": str(top / "go-module" / "vendor"),
                  "warm_imports": list(go_warm_imports)}
        (top / "go-module" / "go.mod").write_text(module["go.mod"])
    (top / "go-cache").mkdir()
    _build_go_cache(top / "go-cache", module)
    for path in top.rglob("*"):
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)


# -- warm artifacts (built once, by the caller, never by a program) ------------------------------------------------
def _version(*argv) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, env={"PATH": SANDBOX_PATH})
    return out.stdout + out.stderr


def _key(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def build_once(name: str, key: str, build) -> Path:
    """cache_root()/name-key, built by build(tmp_dir) into a temporary directory and renamed into place (atomic:
    a half-built artifact is never used)."""
    with _lock:
        target = cache_root() / f"{name}-{key}"
        if not target.is_dir():
            tmp = cache_root() / f".{name}-{key}.{os.getpid()}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            try:
                build(tmp)
                tmp.chmod(0o755)
                tmp.rename(target)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                if not target.is_dir():  # else another process built it first: theirs is as good
                    raise
        return target


def _check(argv, cwd, env=None, what=""):
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True,
                            env={"PATH": SANDBOX_PATH, "HOME": str(cwd), **(env or {})})
    if result.returncode != 0:
        raise ToolchainError(f"{what or argv[0]} failed: {(result.stderr or result.stdout).strip()[-800:]}")


def _readable(tmp: Path) -> None:
    for path in tmp.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


CPP_PCH_FLAGS = [f"-std={CPP_STD}", "-w"]


def _build_cpp_pch(tmp: Path) -> None:
    (tmp / "common.h").write_text("".join(f"#include <{h}>\n" for h in COMMON_CPP_HEADERS))
    _check(["g++", *CPP_PCH_FLAGS, "-x", "c++-header", "common.h", "-o", "common.h.gch"], tmp, what="g++ (header)")
    _readable(tmp)


def cpp_pch_header() -> Path:
    """common.h (COMMON_CPP_HEADERS) with its precompiled common.h.gch beside it; g++ -include picks the .gch."""
    key = _key(_version("g++", "--version"), *CPP_PCH_FLAGS, *COMMON_CPP_HEADERS)
    return build_once("cpp-pch", key, _build_cpp_pch) / "common.h"


def _build_javac_archive(tmp: Path) -> None:
    (tmp / "Main.java").write_text("import java.util.*;\nclass Solution { int f(List<Integer> l) { return "
                                   "l.size(); } }\npublic class Main { public static void main(String[] a) { "
                                   "System.out.println(new Solution().f(Arrays.asList(1, 2))); } }\n")
    _check(["javac", *(f"-J{f}" for f in JAVAC_FLAGS), f"-J-XX:ArchiveClassesAtExit={tmp / 'javac.jsa'}",
            "-d", str(tmp / "out"), "Main.java"], tmp, what="javac (class-data archive)")
    shutil.rmtree(tmp / "out")
    _readable(tmp)


def javac_archive() -> str | None:
    """A CDS archive of the classes javac loads (see the docstring), or None where the JVM cannot make one."""
    if "javac" in _warm:
        return _warm["javac"]
    try:
        root = build_once("javac-cds", _key(_version("javac", "-version"), *JAVAC_FLAGS), _build_javac_archive)
        _warm["javac"] = str(root / "javac.jsa") if (root / "javac.jsa").is_file() else None
    except ToolchainError:
        _warm["javac"] = None  # javac then starts without it: slower, same verdicts
    return _warm["javac"]


def _need_crate_sources() -> None:
    if not os.path.isdir(DEBIAN_CARGO_REGISTRY) or which("cargo") is None:
        raise ToolchainError(f"no Debian crate sources in {DEBIAN_CARGO_REGISTRY} or no cargo "
                             f"(apt-get install {DEBIAN_PACKAGES['rust']})")


def _build_rust_crates(tmp: Path) -> None:
    _need_crate_sources()
    deps = "".join(f'{name} = "{version}"\n' for name, version in RUST_CRATES.items())
    (tmp / "Cargo.toml").write_text(f'[package]\nname = "crates"\nversion = "0.0.0"\nedition = "2021"\n\n'
                                    f'[dependencies]\n{deps}')
    (tmp / "src").mkdir()
    (tmp / "src" / "lib.rs").write_text("")
    (tmp / ".cargo").mkdir()
    (tmp / ".cargo" / "config.toml").write_text(
        '[source.crates-io]\nreplace-with = "debian"\n\n'
        f'[source.debian]\ndirectory = "{DEBIAN_CARGO_REGISTRY}"\n')
    _check(["cargo", "build", "--offline", "--quiet"], tmp, env={"CARGO_HOME": str(tmp / ".cargo-home"),
                                                                    "RUSTC": which("rustc") or "rustc"},
           what="cargo build of the Rust crates")
    shutil.rmtree(tmp / ".cargo-home", ignore_errors=True)
    _readable(tmp)


def _rlib(deps: Path, name: str) -> Path:
    rlibs = sorted(deps.glob(f"lib{name}-*.rlib"))
    if not rlibs:
        raise ToolchainError(f"crate {name} was not built in {deps}")
    return rlibs[0]


def rust_crates() -> dict:
    """{"deps": dir, "externs": {crate: rlib}}: RUST_CRATES built from Debian's sources, offline, with the sandbox's
    rustc (cargo only here, never inside the sandbox)."""
    if "rust" in _warm:
        return _warm["rust"]
    _need_crate_sources()
    key = _key(_version("rustc", "--version"), repr(sorted(RUST_CRATES.items())),
               *sorted(p for p in os.listdir(DEBIAN_CARGO_REGISTRY)))
    deps = build_once("rust-crates", key, _build_rust_crates) / "target" / "debug" / "deps"
    _warm["rust"] = {"deps": str(deps), "externs": {name: str(_rlib(deps, name)) for name in RUST_CRATES}}
    return _warm["rust"]


def _build_go_cache(tmp: Path, module: dict) -> None:
    vendor = module.get("vendor")
    work = tmp / "work"
    work.mkdir()
    (work / "go.mod").write_text(module["go.mod"])
    if vendor:
        (work / "vendor").symlink_to(vendor)
    imports = ["fmt", "os", *module.get("warm_imports", [])]
    body = 'import "testing"\n' + "".join(f'import _ "{imp}"\n' for imp in imports)
    (work / "warm_test.go").write_text(f"package main\n\n{body}\nfunc TestWarm(t *testing.T) {{}}\n")
    env = {"GOCACHE": str(tmp / "cache"), "GOPATH": str(tmp / "gopath"), "GOFLAGS": "-mod=vendor" if vendor
           else "-mod=mod", "GO111MODULE": "on", "GOPROXY": "off", "CGO_ENABLED": "0"}
    _check(["go", "test", "-c", "-trimpath", "-o", "warm.test", "warm_test.go"], work, env=env, what="go build cache")
    shutil.rmtree(work)
    shutil.rmtree(tmp / "gopath", ignore_errors=True)
    _readable(tmp)


def go_cache(module: dict) -> Path:
    """A Go build cache holding the standard library pieces and the module's vendored packages that tests use,
    made by compiling one test that imports them; each program copies it (see the docstring)."""
    key = _key(_version("go", "version"), module["go.mod"], str(module.get("vendor")),
               *module.get("warm_imports", []), "trimpath")
    return build_once("go-cache", key, lambda tmp: _build_go_cache(tmp, module)) / "cache"

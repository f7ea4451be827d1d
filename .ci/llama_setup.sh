#!/usr/bin/env bash
# Make the llama.cpp tests runnable (tests/test_gguf.py, tests/test_gguf_server.py): build llama-cpp-python's wheel
# from its sdist (PyPI has no CPU wheels for it) and llama.cpp's `llama-server` from the llama.cpp source that sdist
# vendors, cache both, install the wheel (with the pinned `gguf`) into the venv and the server binary as
# .venv/bin/llama-server. Versions come from pyproject.toml's `gguf` extra (one home).
#
# The cache (default ~/.cache/codelm/llama, override with CODELM_LLAMA_CACHE) is keyed by version, machine and the
# CPU's instruction-set flags: llama.cpp is compiled for the build machine's CPU (-march=native), so a cached build
# is reused only where it runs. A warm run takes seconds; a cold one compiles llama.cpp twice (the wheel's shared
# library, the static server) and prints the minutes each took: 66 min for the wheel and 79 for the server (built
# side by side) on 2 cores shared by seven agents (load average ~20); far less on a quiet machine. The builds share
# one time budget (CODELM_LLAMA_BUDGET_S, default 1800 s) so CI stays bounded; the server's build directory is kept
# in the cache, so a build cut off by the budget continues on the next run. Idempotent; never fails the caller: on
# any error it warns, exits 0, and the tests skip.
set -u
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${ROOT}/.venv/bin/python"
JOBS="${CODELM_LLAMA_JOBS:-$(nproc 2>/dev/null || echo 2)}"
warn() { echo "WARNING: llama.cpp setup: $*; the llama.cpp tests will be skipped" >&2; exit 0; }
minutes() { awk -v s="$1" 'BEGIN { printf "%.1f min", s / 60 }'; }
DEADLINE=$(( $(date +%s) + ${CODELM_LLAMA_BUDGET_S:-1800} ))
left() { local n=$(( DEADLINE - $(date +%s) )); [ "$n" -gt 0 ] && echo "$n" || echo 1; }

VERSION="$(grep -o 'llama-cpp-python==[0-9][0-9.]*' "$ROOT/pyproject.toml" | head -1 | cut -d= -f3)"
GGUF_PIN="$(grep -o '"gguf==[0-9][0-9.]*"' "$ROOT/pyproject.toml" | head -1 | tr -d '"')"
[ -n "$VERSION" ] && [ -n "$GGUF_PIN" ] || warn "no llama-cpp-python / gguf pins in pyproject.toml"
[ -x "$PY" ] || warn "no virtualenv at $ROOT/.venv (run make setup first)"
command -v cmake >/dev/null && command -v c++ >/dev/null || warn "cmake and a C++ compiler are needed"

FLAGS="$(grep -m1 -E '^(flags|Features)' /proc/cpuinfo 2>/dev/null | sha256sum | cut -c1-12)"
CACHE="${CODELM_LLAMA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/codelm/llama}/${VERSION}-$(uname -m)-${FLAGS}"
mkdir -p "$CACHE" || warn "cannot create $CACHE"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

sdist() {  # the sdist, downloaded once into the cache
    local f
    f="$(ls "$CACHE"/llama_cpp_python-"$VERSION".tar.gz 2>/dev/null)"
    if [ -z "$f" ]; then
        "$PY" -m pip download -q --no-deps --no-binary :all: -d "$CACHE" "llama-cpp-python==$VERSION" >&2 || return 1
        f="$(ls "$CACHE"/llama_cpp_python-"$VERSION".tar.gz)"
    fi
    echo "$f"
}

# 1. the wheel: CPU only, no multimodal library, none of llama.cpp's tools (the server is built separately below)
start=$(date +%s)
WHEEL="$(ls "$CACHE"/llama_cpp_python-"$VERSION"-*.whl 2>/dev/null | head -1)"
if [ -z "$WHEEL" ]; then
    SDIST="$(sdist)" || warn "cannot download the llama-cpp-python $VERSION sdist"
    CMAKE_ARGS="-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF \
-DLLAMA_BUILD_SERVER=OFF" CMAKE_BUILD_PARALLEL_LEVEL="$JOBS" timeout "$(left)" \
        nice -n 10 "$PY" -m pip wheel -q --no-deps -w "$WORK" "$SDIST" \
        || warn "building the llama-cpp-python wheel failed or ran past the budget"
    mv "$WORK"/llama_cpp_python-*.whl "$CACHE"/ && WHEEL="$(ls "$CACHE"/llama_cpp_python-"$VERSION"-*.whl | head -1)"
    echo "llama.cpp setup: built the llama-cpp-python $VERSION wheel in $(minutes $(( $(date +%s) - start )))"
fi
"$PY" -m pip install -q "$WHEEL" "$GGUF_PIN" || warn "installing $WHEEL failed"

# 2. llama-server, statically linked, from the sdist's vendored llama.cpp (no network, no web UI download)
start=$(date +%s)
if [ ! -x "$CACHE/llama-server" ]; then
    SDIST="$(sdist)" || warn "cannot download the llama-cpp-python $VERSION sdist"
    [ -d "$CACHE/src" ] || { mkdir -p "$CACHE/src.tmp" && tar -xzf "$SDIST" -C "$CACHE/src.tmp" \
        && mv "$CACHE/src.tmp" "$CACHE/src"; } || warn "cannot unpack $SDIST"
    SRC="$CACHE/src/llama_cpp_python-$VERSION/vendor/llama.cpp"
    nice -n 10 cmake -S "$SRC" -B "$CACHE/server-build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF \
        -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF >/dev/null || warn "configuring llama.cpp failed"
    timeout "$(left)" nice -n 10 cmake --build "$CACHE/server-build" --target llama-server -j "$JOBS" >/dev/null \
        || warn "building llama-server failed or ran past the budget (it continues on the next run)"
    cp "$CACHE/server-build/bin/llama-server" "$CACHE/llama-server.tmp" && mv "$CACHE/llama-server.tmp" "$CACHE/llama-server"
    echo "llama.cpp setup: built llama-server in $(minutes $(( $(date +%s) - start )))"
fi
cp "$CACHE/llama-server" "$ROOT/.venv/bin/llama-server" || warn "cannot install llama-server into the venv"
"$PY" -c "import llama_cpp, gguf, importlib.metadata as m; print('llama.cpp setup: llama-cpp-python', \
llama_cpp.__version__, '+ gguf', m.version('gguf'), '+ llama-server ready')" || warn "llama_cpp does not import"

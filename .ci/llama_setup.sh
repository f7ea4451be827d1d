#!/usr/bin/env bash
# Make the llama.cpp tests runnable (tests/test_gguf.py, tests/test_gguf_server.py): build llama-cpp-python's wheel
# from its sdist (PyPI has no CPU wheels for it) and llama.cpp's `llama-server` from the llama.cpp source that sdist
# vendors, cache both, install the wheel (with the pinned `gguf`) into the venv and the server binary as
# .venv/bin/llama-server. Versions come from pyproject.toml's `gguf` extra (one home).
#
# The cache (default ~/.cache/codelm/llama, override with CODELM_LLAMA_CACHE) is keyed by version, machine and the
# CPU's instruction-set flags: llama.cpp is compiled for the build machine's CPU (-march=native), so a cached build
# is reused only where it runs. A cold build takes minutes (both together ~25 min on 2 loaded cores; this prints
# them); a warm one seconds. Idempotent; never fails the caller: on any error it warns, exits 0, and the tests skip.
set -u
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${ROOT}/.venv/bin/python"
JOBS="${CODELM_LLAMA_JOBS:-$(nproc 2>/dev/null || echo 2)}"
warn() { echo "WARNING: llama.cpp setup: $*; the llama.cpp tests will be skipped" >&2; exit 0; }
minutes() { awk -v s="$1" 'BEGIN { printf "%.1f min", s / 60 }'; }

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
-DLLAMA_BUILD_SERVER=OFF" CMAKE_BUILD_PARALLEL_LEVEL="$JOBS" \
        nice -n 10 "$PY" -m pip wheel -q --no-deps -w "$WORK" "$SDIST" || warn "building the llama-cpp-python wheel failed"
    mv "$WORK"/llama_cpp_python-*.whl "$CACHE"/ && WHEEL="$(ls "$CACHE"/llama_cpp_python-"$VERSION"-*.whl | head -1)"
    echo "llama.cpp setup: built the llama-cpp-python $VERSION wheel in $(minutes $(( $(date +%s) - start )))"
fi
"$PY" -m pip install -q "$WHEEL" "$GGUF_PIN" || warn "installing $WHEEL failed"

# 2. llama-server, statically linked, from the sdist's vendored llama.cpp (no network, no web UI download)
start=$(date +%s)
if [ ! -x "$CACHE/llama-server" ]; then
    SDIST="$(sdist)" || warn "cannot download the llama-cpp-python $VERSION sdist"
    tar -xzf "$SDIST" -C "$WORK" || warn "cannot unpack $SDIST"
    SRC="$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp"
    nice -n 10 cmake -S "$SRC" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF \
        -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF >/dev/null || warn "configuring llama.cpp failed"
    nice -n 10 cmake --build "$WORK/build" --target llama-server -j "$JOBS" >/dev/null \
        || warn "building llama-server failed"
    cp "$WORK/build/bin/llama-server" "$CACHE/llama-server.tmp" && mv "$CACHE/llama-server.tmp" "$CACHE/llama-server"
    echo "llama.cpp setup: built llama-server in $(minutes $(( $(date +%s) - start )))"
fi
cp "$CACHE/llama-server" "$ROOT/.venv/bin/llama-server" || warn "cannot install llama-server into the venv"
"$PY" -c "import llama_cpp, gguf, importlib.metadata as m; print('llama.cpp setup: llama-cpp-python', \
llama_cpp.__version__, '+ gguf', m.version('gguf'), '+ llama-server ready')" || warn "llama_cpp does not import"

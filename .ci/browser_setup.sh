#!/usr/bin/env bash
# Make the browser tests runnable: Debian's chromium (apt) and the playwright Python package (pip, into the venv).
# Never runs `playwright install` (no browser downloads); tests use /usr/bin/chromium. Idempotent; never fails the
# caller: if something cannot be installed it warns and exits 0, and the browser tests skip with a reason.
set -u
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${ROOT}/.venv/bin/python"
warn() { echo "WARNING: browser setup: $*; browser tests will be skipped" >&2; exit 0; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo -n "$@"; else return 1; fi; }

if [ ! -x /usr/bin/chromium ]; then
    for attempt in 1 2 3; do
        as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
            && break
        echo "apt-get failed (attempt $attempt), retrying" >&2; sleep $((attempt * 5))
    done
    [ -x /usr/bin/chromium ] || warn "could not install chromium"
fi
"$PY" -c "import playwright" 2>/dev/null || "$PY" -m pip install -q "playwright>=1.44" || warn "could not install playwright"
echo "browser setup: chromium $(/usr/bin/chromium --version 2>/dev/null | awk '{print $2}'), playwright ready"

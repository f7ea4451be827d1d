#!/usr/bin/env bash
# Install the toolchains HumanEval-X and the sandbox's language tests need (about 1 GB from Debian; the packages and
# why each: .ci/lang_packages.txt), idempotently, and say how many minutes it took. Never fails the caller: what cannot
# be installed makes those tests skip with the reason (sandbox.toolchains.missing says which).
set -u
start=$(date +%s)
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo -n "$@"; else return 1; fi; }
mapfile -t packages < <(grep -v '^#' "$ROOT/.ci/lang_packages.txt")
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    ok=0
    for attempt in 1 2 3; do
        as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive nice -n 10 \
            apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null && { ok=1; break; }
        echo "lang setup: apt-get failed (attempt $attempt), retrying" >&2; sleep $((attempt * 5))
    done
    [ $ok = 1 ] || echo "WARNING: lang setup: could not install ${missing[*]}; those language tests will skip" >&2
fi
# Build the warm toolchain artifacts now (Rust crates: about a minute), so that no test pays for them.
PY="$ROOT/.venv/bin/python"; [ -x "$PY" ] || PY=python3
(cd "$ROOT" && nice -n 10 "$PY" -c '
from sandbox import toolchains
for language in toolchains.LANGUAGES:
    print("lang setup:", language + ":", toolchains.missing(language) or "ready")
') || echo "WARNING: lang setup: could not check the toolchains" >&2
echo "lang setup: took $(( ($(date +%s) - start) / 60 )) min $(( ($(date +%s) - start) % 60 )) s"
exit 0

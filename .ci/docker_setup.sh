#!/usr/bin/env bash
# Make a Docker engine and the sandbox image available for the docker-marked tests, idempotently.
#
# Steps, each skipped when already done: install docker.io + mmdebstrap (apt, retried), start dockerd without
# bridge/iptables (CI machines have no network namespace plumbing), build a Debian base image offline with mmdebstrap
# (no registry is reachable here), then build the `sandbox` stage of the project's Dockerfile on top of it.
# Never fails the caller: if something is impossible it prints one warning and exits 0, so docker tests skip.
set -u

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASE_IMAGE="${CODELM_SANDBOX_BASE:-codelm-base:bookworm}"
SANDBOX_IMAGE="${CODELM_SANDBOX_IMAGE:-codelm-sandbox:latest}"
LOG="${TMPDIR:-/tmp}/codelm-dockerd.log"

warn() { echo "WARNING: docker setup: $*; docker tests will be skipped" >&2; exit 0; }
engine_up() { docker info >/dev/null 2>&1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo -n "$@"; else return 1; fi; }

apt_install() {
    for attempt in 1 2 3; do
        as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" && return 0
        echo "apt-get failed (attempt $attempt), retrying" >&2; sleep $((attempt * 5))
    done
    return 1
}

# 1. Tools.
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
if [ ${#missing[@]} -gt 0 ] && ! engine_up; then
    apt_install "${missing[@]}" || warn "could not install ${missing[*]}"
fi
command -v docker >/dev/null || warn "no docker client"

# 2. Engine.
if ! engine_up; then
    command -v dockerd >/dev/null || warn "no dockerd"
    # --bridge=none/--iptables=false: the sandbox uses network_mode=none, and these hosts cannot set up bridges.
    as_root sh -c "nohup dockerd --bridge=none --iptables=false >'$LOG' 2>&1 &" || warn "could not start dockerd"
    for _ in $(seq 60); do engine_up && break; sleep 1; done
    engine_up || warn "dockerd did not come up (log: $LOG)"
fi

# 3. Base image, built offline (no registry is reachable on CI machines).
if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    command -v mmdebstrap >/dev/null || apt_install mmdebstrap || warn "no mmdebstrap to build $BASE_IMAGE"
    tar="$(mktemp -d)/base.tar"
    mmdebstrap --quiet --variant=essential --include=python3 bookworm "$tar" \
        || warn "mmdebstrap could not build the base image"
    docker import "$tar" "$BASE_IMAGE" >/dev/null || warn "docker import failed"
    rm -rf "$(dirname "$tar")"
fi

# 4. The sandbox image (the Dockerfile's `sandbox` stage).
if ! docker image inspect "$SANDBOX_IMAGE" >/dev/null 2>&1; then
    DOCKER_BUILDKIT=0 docker build --quiet --network host --target sandbox --build-arg "BASE_IMAGE=$BASE_IMAGE" \
        -t "$SANDBOX_IMAGE" -f "$ROOT/Dockerfile" "$ROOT/sandbox" >/dev/null \
        || warn "could not build $SANDBOX_IMAGE"
fi
echo "docker setup: engine up, image $SANDBOX_IMAGE ready"

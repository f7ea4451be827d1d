#!/usr/bin/env bash
# Make a Docker engine and the sandbox image available for the docker-marked tests, idempotently.
#
# Steps, each skipped when already done: install docker.io + mmdebstrap (apt, retried), start dockerd without
# bridge/iptables (CI machines have no network namespace plumbing), build a Debian base image offline with mmdebstrap
# (no registry is reachable here), then build the `sandbox` stage of the project's Dockerfile on top of it.
# With --lang, also the `sandbox-lang` stage (C++, Java, JavaScript, Go, Rust), offline: a second base made by
# mmdebstrap with the toolchains of .ci/lang_packages.txt already in it (~1.9 GB), then the stage, built with no
# network at all, adds the warm artifacts; the minutes and the image size are printed.
# Never fails the caller: if something is impossible it prints one warning and exits 0, so docker tests skip.
set -u
LANG_STAGE=0; [ "${1:-}" = "--lang" ] && LANG_STAGE=1

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASE_IMAGE="${CODELM_SANDBOX_BASE:-codelm-base:bookworm}"
SANDBOX_IMAGE="${CODELM_SANDBOX_IMAGE:-codelm-sandbox:latest}"
LANG_BASE_IMAGE="${CODELM_SANDBOX_LANG_BASE:-codelm-base-lang:bookworm}"
LANG_IMAGE="${CODELM_SANDBOX_LANG_IMAGE:-codelm-sandbox-lang:latest}"
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
base_image() {  # base_image IMAGE PACKAGES: a Debian bookworm with python3 and PACKAGES, made by mmdebstrap
    docker image inspect "$1" >/dev/null 2>&1 && return 0
    command -v mmdebstrap >/dev/null || apt_install mmdebstrap || warn "no mmdebstrap to build $1"
    local tar; tar="$(mktemp -d)/base.tar"
    nice -n 10 mmdebstrap --quiet --variant=essential --include="python3${2:+,$2}" bookworm "$tar" </dev/null \
        || { rm -rf "$(dirname "$tar")"; warn "mmdebstrap could not build $1"; }
    docker import "$tar" "$1" >/dev/null || { rm -rf "$(dirname "$tar")"; warn "docker import of $1 failed"; }
    rm -rf "$(dirname "$tar")"
}
base_image "$BASE_IMAGE" ""

# 4. The sandbox image (the Dockerfile's `sandbox` stage).
if ! docker image inspect "$SANDBOX_IMAGE" >/dev/null 2>&1; then
    DOCKER_BUILDKIT=0 docker build --quiet --network host --target sandbox --build-arg "BASE_IMAGE=$BASE_IMAGE" \
        -t "$SANDBOX_IMAGE" -f "$ROOT/Dockerfile" "$ROOT/sandbox" >/dev/null \
        || warn "could not build $SANDBOX_IMAGE"
fi
echo "docker setup: engine up, image $SANDBOX_IMAGE ready"

# 5. The multi-language image (--lang), offline: its base holds the toolchains, so the build needs no network. Built
# every time: docker's layer cache makes that seconds when nothing changed, and the warm artifacts follow
# sandbox/toolchains.py when it did (the names the docker backend gives the image's steps come from it).
if [ $LANG_STAGE = 1 ]; then
    start=$(date +%s)
    base_image "$LANG_BASE_IMAGE" "$(grep -v '^#' "$ROOT/.ci/lang_packages.txt" | paste -sd, -)"
    based=$(date +%s)
    build_log="${TMPDIR:-/tmp}/codelm-sandbox-lang-build.log"
    DOCKER_BUILDKIT=0 nice -n 10 docker build --network none --target sandbox-lang \
        --build-arg "BASE_IMAGE=$LANG_BASE_IMAGE" -t "$LANG_IMAGE" -f "$ROOT/Dockerfile" "$ROOT" >"$build_log" 2>&1 \
        || { tail -n 20 "$build_log" >&2; warn "could not build $LANG_IMAGE (log: $build_log)"; }
    size=$(docker image inspect -f '{{.Size}}' "$LANG_IMAGE")
    echo "docker setup: image $LANG_IMAGE ready: base $(( based - start )) s, stage $(( $(date +%s) - based )) s," \
         "$(( size >> 20 )) MiB"
fi

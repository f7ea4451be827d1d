# Multi-stage build. Stages, in order: `sandbox` (runs untrusted generated programs), `sandbox-lang` (the same with
# the C++/Java/JavaScript/Go/Rust toolchains), then the workbench (the default target, so it must stay the last stage).
ARG BASE_IMAGE=python:3.11-slim

# --- sandbox stage ---
# The image sandbox/docker_backend.py keeps warm containers of. It only needs a python3 on PATH: the runner is passed
# in with each program, so the image does not go stale when sandbox/ changes. Build it with
#   docker build --target sandbox -t codelm-sandbox:latest .
# (CI, with no registry: .ci/docker_setup.sh builds BASE_IMAGE offline with mmdebstrap.)
FROM ${BASE_IMAGE} AS sandbox
# Programs run as nobody (65534) in a tmpfs mounted at /work; the directory exists so the mount point does.
RUN mkdir -p /work && chmod 1777 /work
ENV PYTHONDONTWRITEBYTECODE=1 OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
WORKDIR /work
CMD ["sleep", "infinity"]

# --- sandbox-lang stage ---
# The sandbox image plus the toolchains of sandbox/toolchains.py (C++, Java, JavaScript, Go, Rust; ~1 GB, the Debian
# packages of .ci/lang_packages.txt) and their warm artifacts (toolchains.build_image: the C++ precompiled header,
# javac's class-data archive, the Rust crates HumanEval-X's tests use, built from Debian's sources, and HumanEval-X's
# vendored Go test modules with a Go build cache), read-only at /opt/codelm-toolchains. From the repository root:
#   docker build --network host --target sandbox-lang -t codelm-sandbox-lang:latest .
# Offline (no registry, no network in the build): .ci/docker_setup.sh --lang makes a base that already holds the
# packages (mmdebstrap from Debian's archive) and passes it as BASE_IMAGE; the install below then has nothing to do.
FROM sandbox AS sandbox-lang
ARG GO_WARM_IMPORTS=github.com/stretchr/testify/assert
COPY .ci/lang_packages.txt /opt/codelm-build/
RUN missing=$(for p in $(grep -v "^#" /opt/codelm-build/lang_packages.txt); do \
            dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"; done) \
    && if [ -n "$missing" ]; then apt-get update && DEBIAN_FRONTEND=noninteractive \
           apt-get install -y --no-install-recommends $missing && rm -rf /var/lib/apt/lists/*; fi
COPY sandbox/steps.py sandbox/toolchains.py /opt/codelm-build/sandbox/
COPY codelm/benchdata/humaneval-x/go/go.mod codelm/benchdata/humaneval-x/go/vendor.tar.gz /opt/codelm-build/go/
RUN cd /opt/codelm-build && touch sandbox/__init__.py \
    && HOME=/tmp python3 -c "import sys; from sandbox import toolchains; \
toolchains.build_image(toolchains.IMAGE_ROOT, 'go', sys.argv[1:])" $GO_WARM_IMPORTS \
    && cd / && rm -rf /opt/codelm-build /tmp/* /tmp/.[!.]* 2>/dev/null; test -d /opt/codelm-toolchains/go-cache/cache

# --- workbench stage (added by the serving work) ---
# The default target (the last stage): the infill API and the playground on port 8000. From the repository root:
#   docker build --network host -t codelm .
#   docker run -p 8000:8000 -v "$PWD/runs/demo:/model:ro" codelm        # then open http://127.0.0.1:8000/
# BASE_IMAGE (above) is any Debian-like image with python3 >= 3.11 (python:3.11-slim, or the offline bookworm base).
# torch: PyPI's default Linux wheel is the CUDA build (gigabytes); the CPU-only build lives on download.pytorch.org,
# which this project's CI machines cannot reach, so the index is a build argument:
#   --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu     where that index is reachable (small image)
FROM ${BASE_IMAGE} AS workbench
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX=
# optional wheel sources for machines that reach PyPI only through their own proxy: e.g. wheels fetched with
# `pip download` and served on 127.0.0.1 to a --network host build (PIP_FIND_LINKS + PIP_INDEX_URL)
ARG PIP_FIND_LINKS
ARG PIP_INDEX_URL
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 PATH=/opt/venv/bin:$PATH
# a virtualenv: Debian's system python refuses `pip install` (PEP 668); python:*-slim images have venv already
RUN if ! python3 -c "import ensurepip" >/dev/null 2>&1; then \
        apt-get update && apt-get install -y --no-install-recommends python3-venv && rm -rf /var/lib/apt/lists/*; \
    fi && python3 -m venv /opt/venv
RUN pip install ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} "$TORCH_SPEC"
WORKDIR /app
COPY pyproject.toml README.md ./
COPY codelm codelm
COPY evals evals
COPY sandbox sandbox
COPY web web
RUN pip install .
# serve as nobody (exists in every Debian base, even the minimal offline one); the model mount is read-only
USER nobody
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"
# a checkpoint (or run) directory mounted at /model; 0.0.0.0 so that the published port reaches the server
CMD ["codelm", "serve", "/model", "--host", "0.0.0.0", "--port", "8000"]

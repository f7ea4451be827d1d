# Multi-stage build. Stages, in order: `sandbox` (runs untrusted generated programs), then the workbench (the default
# target, so it must stay the last stage).
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

# --- workbench stage (added by the serving work) ---

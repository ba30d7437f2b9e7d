# Two images, one per role of the service (see docs/deploy.md); build each with its --target:
#
#   docker build --target api    -t facesr-api:<tag> .      `facesr serve`, the HTTP API in Redis mode (:8000)
#   docker build --target worker -t facesr-worker:<tag> .   `facesr worker`, the GPU model worker (metrics :9100)
#
# api     Python slim, the base dependencies of pyproject.toml and the package: no torch, no CUDA. API replicas
#         run on CPU nodes and only admit, queue and answer, so the gigabytes of torch and its CUDA libraries
#         would be dead weight in every pull. This image cannot run the model: it needs FACESR_REDIS_URL and
#         workers behind the queue (`facesr serve` without Redis would load the model in-process).
# worker  The CUDA base image, the CUDA build of torch and the `model` extra. Being the full package, it can
#         also run `facesr serve` without Redis (API and model in one process) when given `serve`.
#
# Each target is a builder stage (a virtual environment in /opt/venv) and a runtime stage on the same base
# image, so the interpreter that built the venv is the one that runs it. Both run Python 3.12 (Ubuntu 24.04's
# python3 on the worker side). A `docker build .` without --target builds the last stage, the worker.
#
# Needs BuildKit (cache and secret mounts), and nothing but the base images and the package registries: no
# `# syntax=` line, so the Dockerfile frontend built into the engine is used (Docker 20.10 or newer) and no
# frontend image is pulled from Docker Hub. The base images are build arguments: a mirror or a locally made
# Debian-like base (python3, python3-venv and apt) can stand in (scripts/compose-smoke.sh does that).
#
# Behind a TLS-inspecting proxy, give pip and apt the CA bundle to trust as the BuildKit secret `ca` (a
# whole bundle: the usual public CAs plus the proxy's, e.g. the host's /etc/ssl/certs/ca-certificates.crt):
#
#   docker build --secret id=ca,src=/etc/ssl/certs/ca-certificates.crt --target api -t facesr-api:<tag> .
#
# It is mounted at /run/secrets/ca for the pip and apt steps only (PIP_CERT is set inside those RUNs, apt
# gets `-o Acquire::https::CAInfo=/run/secrets/ca` on its command line; the mount is world-readable because
# apt downloads as the user _apt) and never lands in a layer of any stage; without the secret pip and apt use
# their own CAs, as before.

# Official Python image, Debian slim; the full tag pins the Python patch release and the Debian release.
ARG PYTHON_IMAGE=python:3.12.11-slim-bookworm
# The CUDA *base* image of the CUDA version the torch wheel was built for. The PyTorch wheel ships its own
# CUDA user-space libraries (cuBLAS, cuDNN, NCCL as pip packages), so the larger -runtime image would only
# add a second, unused copy of them (~2 GB). What the base image adds is what matters at run time: the CUDA
# runtime, and NVIDIA_REQUIRE_CUDA, so that the NVIDIA container toolkit refuses a host driver too old for
# this CUDA with a clear message instead of a torch error at the first kernel launch.
# Change CUDA_BASE_IMAGE and TORCH_INDEX_URL together (e.g. 12.8.1 with .../whl/cu128 for older drivers).
ARG CUDA_BASE_IMAGE=nvidia/cuda:13.0.1-base-ubuntu24.04

# =========================================================================================================
# api: the HTTP API alone
# =========================================================================================================

# ---------------------------------------------------------------------------------------------------------
# api-builder: a virtual environment with the base dependencies and the facesr package, nothing else.
# ---------------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS api-builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# The dependencies first, from pyproject.toml alone, so that editing the code does not reinstall them.
# deploy/docker/requirements.py prints [project.dependencies] (tomllib, standard library): the same list a
# plain `pip install .` would install, written out so that it gets a layer of its own. README.md (the
# package's long description) comes with the code, so that editing it does not reinstall the dependencies.
WORKDIR /src
COPY pyproject.toml deploy/docker/requirements.py ./
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca REQUESTS_CA_BUNDLE=/run/secrets/ca; fi \
    && python requirements.py api > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

# The package itself, not editable. It carries the bundled checkpoint too (package data, about 1.3 MB),
# which the API does not read; splitting the package for that is not worth it.
COPY README.md ./
COPY model ./model
COPY service ./service
COPY client ./client
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca REQUESTS_CA_BUNDLE=/run/secrets/ca; fi \
    && pip install --no-deps . \
    && pip check

# ---------------------------------------------------------------------------------------------------------
# api: the interpreter of the same image, tini, the virtual environment and an unprivileged user.
# ---------------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS api

ARG DEBIAN_FRONTEND=noninteractive

# tini from Debian; not pinned, for the same reason as in the worker below. The CA secret, when given, goes
# to apt on the command line only (`set --` makes it the arguments "$@" of both apt-get calls).
# hadolint ignore=DL3008
RUN --mount=type=secret,id=ca,required=false,mode=0444 \
    if [ -s /run/secrets/ca ]; then set -- -o Acquire::https::CAInfo=/run/secrets/ca; fi \
    && apt-get "$@" update \
    && apt-get "$@" install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 facesr \
    && useradd --system --uid 10001 --gid facesr --home-dir /home/facesr --create-home \
        --shell /usr/sbin/nologin facesr

COPY --from=api-builder /opt/venv /opt/venv
COPY --chmod=0755 deploy/docker/healthcheck.py /usr/local/bin/facesr-healthcheck

# FACESR_HOST: inside a container the API must listen on every interface (the settings default is loopback).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FACESR_HOST=0.0.0.0

# What this image promises, checked on the finished environment, or the build fails:
#   1. neither torch nor safetensors is installed (nothing of the `model` extra slipped into the base list);
#   2. the CLI starts and has its `serve` command;
#   3. the app builds in Redis mode through the factory that `facesr serve --workers N` hands to uvicorn,
#      so no module on the API's path imports torch. The URL is only parsed here: nothing connects.
RUN python -c "import importlib.util as u, sys; found = [m for m in ('torch', 'safetensors') if u.find_spec(m)]; \
sys.exit(f'the API image must not contain {found}' if found else 0)" \
    && facesr serve --help > /dev/null \
    && FACESR_REDIS_URL=redis://127.0.0.1:6379/0 python -c \
        "from facesr.service.api.app import create_app_from_environment as factory; factory()"

USER 10001:10001
WORKDIR /home/facesr
EXPOSE 8000

# Liveness of the API (GET /healthz); compose probes /readyz instead, Kubernetes has its own probes.
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["facesr-healthcheck", "http://127.0.0.1:8000/healthz"]

# tini is PID 1: it forwards SIGTERM to facesr (uvicorn drains on it) and reaps children.
ENTRYPOINT ["tini", "--", "facesr"]
CMD ["serve"]

# =========================================================================================================
# worker: the model on the GPU
# =========================================================================================================

# ---------------------------------------------------------------------------------------------------------
# worker-builder: a virtual environment with torch (CUDA build), the `model` extra and the facesr package.
# ---------------------------------------------------------------------------------------------------------
FROM ${CUDA_BASE_IMAGE} AS worker-builder

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130
# 1: fail the build when the package carries no bundled checkpoint (model/checkpoints/default.safetensors);
# 0: build an image that is always given a mounted checkpoint through FACESR_CHECKPOINT.
ARG REQUIRE_BUNDLED_CHECKPOINT=1

# Build-time only (ARG, not ENV): nothing of it stays in the image's environment.
ARG DEBIAN_FRONTEND=noninteractive
ENV PIP_DISABLE_PIP_VERSION_CHECK=1

# Ubuntu's own python3 (3.12 on 24.04), so the runtime stage below has the identical interpreter.
# Distribution package versions are not pinned: the base image tag pins the release and security updates
# should flow in on rebuild.
# The CUDA image's own apt source is HTTPS: the CA secret, when given, goes to apt as in the api stage.
# hadolint ignore=DL3008
RUN --mount=type=secret,id=ca,required=false,mode=0444 \
    if [ -s /run/secrets/ca ]; then set -- -o Acquire::https::CAInfo=/run/secrets/ca; fi \
    && apt-get "$@" update \
    && apt-get "$@" install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# torch first, in its own layer: the largest download, and it changes only with TORCH_VERSION.
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca REQUESTS_CA_BUNDLE=/run/secrets/ca; fi \
    && pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}" \
    && python -c "import torch, sys; sys.exit(0 if torch.version.cuda else 'torch wheel is not a CUDA build')"

# The other dependencies, from pyproject.toml alone, so that editing the code does not reinstall them:
# [project.dependencies] plus the `model` extra, without torch (installed above from the CUDA index; a
# plain `torch>=...` here could let pip swap it for the default wheel).
WORKDIR /src
COPY pyproject.toml deploy/docker/requirements.py ./
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca REQUESTS_CA_BUNDLE=/run/secrets/ca; fi \
    && python requirements.py worker > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

# The package itself, not editable: the bundled checkpoint travels inside site-packages as package data.
COPY README.md ./
COPY model ./model
COPY service ./service
COPY client ./client
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca REQUESTS_CA_BUNDLE=/run/secrets/ca; fi \
    && pip install --no-deps . \
    && pip check \
    && python -c "import sys; from facesr.model.checkpoints import DEFAULT_CHECKPOINT as p; \
print('bundled checkpoint:', p, 'present' if p.is_file() else 'MISSING'); \
sys.exit(1 if ${REQUIRE_BUNDLED_CHECKPOINT} and not p.is_file() else 0)"

# ---------------------------------------------------------------------------------------------------------
# worker: the interpreter, tini, the virtual environment and an unprivileged user. No compilers, no pip
# cache, nothing fetched at run time (the model is in the image or mounted).
# ---------------------------------------------------------------------------------------------------------
FROM ${CUDA_BASE_IMAGE} AS worker

ARG DEBIAN_FRONTEND=noninteractive

# hadolint ignore=DL3008
RUN --mount=type=secret,id=ca,required=false,mode=0444 \
    if [ -s /run/secrets/ca ]; then set -- -o Acquire::https::CAInfo=/run/secrets/ca; fi \
    && apt-get "$@" update \
    && apt-get "$@" install -y --no-install-recommends python3 tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 facesr \
    && useradd --system --uid 10001 --gid facesr --home-dir /home/facesr --create-home \
        --shell /usr/sbin/nologin facesr

COPY --from=worker-builder /opt/venv /opt/venv
COPY --chmod=0755 deploy/docker/healthcheck.py /usr/local/bin/facesr-healthcheck

# The worker's metrics endpoint (FACESR_METRICS_PORT, 9100) binds all interfaces already; FACESR_HOST is for
# `facesr serve` run from this image.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FACESR_HOST=0.0.0.0

# Checked on the finished environment (no GPU needed): the CLI has its `worker` command, and torch, the
# safetensors reader and the worker's code import with this stage's interpreter.
RUN facesr worker --help > /dev/null \
    && python -c "import torch, safetensors, facesr.service.worker"

USER 10001:10001
WORKDIR /home/facesr
EXPOSE 9100 8000

# Liveness of the worker (GET /healthz on its metrics port). Compose probes /readyz (model warmed up),
# Kubernetes has its own probes; run as `serve`, point it at :8000 (docker run --health-cmd ...).
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["facesr-healthcheck", "http://127.0.0.1:9100/healthz"]

# tini is PID 1: it forwards SIGTERM to facesr (the worker drains on it) and reaps children.
ENTRYPOINT ["tini", "--", "facesr"]
CMD ["worker"]

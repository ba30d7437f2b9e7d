"""The service under test, started in subprocesses: embedded (`facesr serve`), or a Redis server, the API
(`facesr serve --redis-url`) and N workers (`facesr worker`). Or an existing deployment, given its URL.

Each process logs to a file in the output folder; everything started is stopped (SIGTERM, then SIGKILL)
when the context exits.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

READY_TIMEOUT_S = 300.0  # loading, measuring the layout and warming up, on a slow shared CPU
CLI = [sys.executable, "-m", "facesr.service.cli"]


class StackError(RuntimeError):
    """The service could not be started or did not become ready."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Stack:
    """A running service: where to send requests, where the worker counters are, what was started."""

    mode: str  # "embedded", "redis" or "url"
    url: str
    metrics_urls: list[str]
    processes: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            for name, process in self.processes:
                if process.poll() is not None:
                    raise StackError(f"{name} exited with status {process.returncode} before it was ready")
            try:
                response = httpx.get(f"{self.url}/readyz", timeout=5)
                if response.status_code == 200:
                    return
                last = f"{response.status_code} {response.text[:200]}"
            except httpx.HTTPError as error:
                last = type(error).__name__
            time.sleep(0.25)
        raise StackError(f"{self.url} was not ready within {timeout_s:.0f} s (last answer: {last})")

    def served_models(self) -> dict[str, dict[str, Any]]:
        """GET /v1/models as {name: the model's entry (model_id, card, ...)}."""
        response = httpx.get(f"{self.url}/v1/models", timeout=10)
        response.raise_for_status()
        return {model["name"]: model for model in response.json()["models"]}

    def stop(self) -> None:
        for _, process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for _, process in reversed(self.processes):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()


def _spawn(name: str, command: Sequence[str], env: Mapping[str, str], logs: Path) -> subprocess.Popen[bytes]:
    """Start one of the service's own processes (our CLI or redis-server; no shell), logging to a file."""
    with (logs / f"{name}.log").open("wb") as log:
        return subprocess.Popen(list(command), env=dict(env), stdout=log, stderr=subprocess.STDOUT)  # noqa: S603


def service_environment(settings: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without FACESR_ settings, plus ``settings`` (FACESR_ names)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("FACESR_")}
    return {**env, **settings}


def start_embedded(settings: Mapping[str, str], logs: Path) -> Stack:
    port = free_port()
    command = [*CLI, "serve", "--host", "127.0.0.1", "--port", str(port)]
    process = _spawn("embedded", command, service_environment(settings), logs)
    url = f"http://127.0.0.1:{port}"
    stack = Stack("embedded", url, [f"{url}/metrics"], [("embedded", process)])
    _ready_or_stop(stack)
    return stack


def redis_server_available() -> bool:
    return shutil.which("redis-server") is not None


def start_redis_mode(settings: Mapping[str, str], workers: int, logs: Path) -> Stack:
    """A private redis-server (no persistence), the API and ``workers`` worker processes."""
    if not redis_server_available():
        raise StackError("redis-server is not installed; Redis mode needs it (or pass --url)")
    redis_port, api_port = free_port(), free_port()
    stack = Stack("redis", f"http://127.0.0.1:{api_port}", [])
    try:
        _start_redis_processes(stack, settings, workers, logs, redis_port, api_port)
        stack.wait_ready()
        _wait_for_workers(stack, workers)
    except BaseException:  # a failed spawn or wait must not leave Redis, API or workers running
        stack.stop()
        raise
    return stack


def _wait_for_workers(stack: Stack, workers: int, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Readiness needs one ready worker; the benchmark waits for all of them."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        cards = stack.served_models()
        if cards and min(int(model["card"].get("workers", 0)) for model in cards.values()) >= workers:
            return
        time.sleep(0.25)
    raise StackError(f"not every one of the {workers} workers became ready within {timeout_s:.0f} s")


def _ready_or_stop(stack: Stack) -> None:
    try:
        stack.wait_ready()
    except BaseException:
        stack.stop()
        raise


def existing(url: str, metrics_urls: Sequence[str]) -> Stack:
    """A deployment started elsewhere (nothing is started or stopped here)."""
    stack = Stack("url", url.rstrip("/"), list(metrics_urls) or [f"{url.rstrip('/')}/metrics"])
    stack.wait_ready(timeout_s=30)
    return stack


def _start_redis_processes(
    stack: Stack, settings: Mapping[str, str], workers: int, logs: Path, redis_port: int, api_port: int
) -> None:
    server = [
        "redis-server",
        "--port",
        str(redis_port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    stack.processes.append(("redis", _spawn("redis", server, os.environ, logs)))
    env = service_environment({**settings, "FACESR_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0"})
    for index in range(workers):
        metrics_port = free_port()
        command = [*CLI, "worker", "--metrics-port", str(metrics_port)]
        stack.processes.append((f"worker-{index}", _spawn(f"worker-{index}", command, env, logs)))
        stack.metrics_urls.append(f"http://127.0.0.1:{metrics_port}/metrics")
    api = _spawn("api", [*CLI, "serve", "--host", "127.0.0.1", "--port", str(api_port)], env, logs)
    stack.processes.append(("api", api))

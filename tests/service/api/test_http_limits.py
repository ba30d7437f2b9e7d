"""The FACESR_HTTP_* limits, on a real uvicorn server configured as `facesr serve` configures it.

Raw sockets, because the point is what a misbehaving client can make the server hold: an endless header,
a connection that never sends a request, headers or a body trickled byte by byte, more connections than
the cap. Each test fails when its limit is taken out of `uvicorn_http_options`.
"""

from __future__ import annotations

import functools
import json
import pickle
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from typer.testing import CliRunner

from facesr.model.inference import FaceSR
from facesr.service import commands, metrics
from facesr.service.api import create_app
from facesr.service.cli import app as cli_app
from facesr.service.queue.memory_backend import InProcessQueue
from facesr.service.settings import ServiceSettings
from facesr.service.worker.loop import Worker
from tests.service.conftest import MODEL_NAME, TEST_LIMITS, LiveServer

KEEPALIVE_S = 2
HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.0
MAX_HEADERS = 20
MAX_CONNECTIONS = 4
SLACK_S = 1.5  # scheduling delay allowed on a busy test machine
LIMITS: dict[str, Any] = {
    "http_max_header_bytes": 16_384,
    "http_max_headers": MAX_HEADERS,
    "http_keepalive_timeout_s": KEEPALIVE_S,
    "http_header_timeout_s": HEADER_TIMEOUT_S,
    "http_body_timeout_s": BODY_TIMEOUT_S,
    "http_max_connections": MAX_CONNECTIONS,
}
MiB = 1024 * 1024


class LimitedServer(LiveServer):
    """The test API server with the uvicorn options of `facesr serve` for the given settings."""

    def __init__(self, app: Any, settings: ServiceSettings) -> None:
        super().__init__(app)
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            ws="none",
            lifespan="on",
            **commands.uvicorn_http_options(settings),
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name=f"uvicorn-{self.port}", daemon=True)


@pytest.fixture(scope="module")
def server(tiny_engine: FaceSR) -> Iterator[LimitedServer]:
    settings = ServiceSettings(**{**TEST_LIMITS, **LIMITS})
    backend = InProcessQueue(
        settings.queue_settings(),
        lambda source: Worker({MODEL_NAME: tiny_engine}, source, settings.worker_settings()),
        events=metrics.PrometheusQueueEvents(),
    )
    running = LimitedServer(create_app(settings, backend), settings)
    running.start()
    try:
        yield running
    finally:
        running.stop()


def _connect(server: LimitedServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.settimeout(5)
    return sock


def _request(path: str = "/healthz", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: test"] + [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _read_response(sock: socket.socket) -> tuple[int, bytes]:
    """Status and body of one response (Content-Length framed; without one, what has arrived)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = {
        name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])
    }
    if "content-length" in fields:
        while len(body) < int(fields["content-length"]):
            body += sock.recv(65536)
    return int(lines[0].split()[1]), body


def _closed_by_server(sock: socket.socket, within_s: float) -> float | None:
    """Seconds until the server closes the connection (EOF or reset), None if it is still open."""
    start = time.monotonic()
    sock.settimeout(within_s)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return time.monotonic() - start


def _peak_rss_reset() -> bool:
    """Restart this process's peak-RSS count (Linux); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _rss_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} in /proc/self/status")


def test_a_request_within_the_limits_is_served(server: LimitedServer):
    with _connect(server) as sock:
        sock.sendall(_request(headers={f"X-Field-{i}": "v" for i in range(MAX_HEADERS - 2)}))
        assert _read_response(sock)[0] == 200


def test_an_oversized_header_is_refused_before_it_is_read(server: LimitedServer):
    """64 MiB of one header: the server stops reading after about 16 KiB, never answers 200 and its
    process (here: the test process) does not grow by the header's size."""
    measure_memory = _peak_rss_reset()
    before = _rss_mib("VmRSS") if measure_memory else 0.0
    chunk, sent, status = b"a" * MiB, 0, None
    with _connect(server) as sock:
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Big: ")
            for _ in range(64):
                sock.sendall(chunk)
                sent += len(chunk)
            sock.sendall(b"\r\n\r\n")
        except OSError:
            pass  # the server closed the connection: what the limit is for
        try:
            status = _read_response(sock)[0]
        except OSError:
            status = None  # reset before the 400 could be read

    assert status in (None, 400, 431)
    assert sent < 64 * MiB, "the server read the whole 64 MiB header"
    if measure_memory:
        assert _rss_mib("VmHWM") - before < 32, "the server buffered the header"


def test_too_many_header_fields_get_431(server: LimitedServer):
    with _connect(server) as sock:
        sock.sendall(_request(headers={f"X-Field-{i}": "v" for i in range(MAX_HEADERS)}))
        status, body = _read_response(sock)
        assert status == 431
        assert json.loads(body)["type"] == "urn:facesr:problem:too-many-headers"
        assert _closed_by_server(sock, within_s=1.0) is not None


def test_a_connection_that_sends_nothing_is_closed_after_the_keepalive_timeout(server: LimitedServer):
    with _connect(server) as sock:
        elapsed = _closed_by_server(sock, within_s=KEEPALIVE_S + SLACK_S)
    assert elapsed is not None, "an idle new connection was held open"
    assert elapsed >= KEEPALIVE_S - 0.5


def test_an_idle_keepalive_connection_is_closed(server: LimitedServer):
    with _connect(server) as sock:
        sock.sendall(_request())
        assert _read_response(sock)[0] == 200
        assert _closed_by_server(sock, within_s=KEEPALIVE_S + SLACK_S) is not None


def test_headers_sent_too_slowly_are_cut_off(server: LimitedServer):
    """Slowloris: one byte of header every 0.1 s, never finishing; the connection is closed once the
    head has taken longer than FACESR_HTTP_HEADER_TIMEOUT_S (the keep-alive timer alone would not)."""
    with _connect(server) as sock:
        start = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Slow: ")
        closed = False
        while time.monotonic() - start < HEADER_TIMEOUT_S + SLACK_S:
            try:
                sock.sendall(b"a")
                sock.settimeout(0.1)
                if sock.recv(65536) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
        elapsed = time.monotonic() - start
    assert closed, "a request head trickled byte by byte was held open"
    assert elapsed >= HEADER_TIMEOUT_S - 0.2


def test_a_body_sent_too_slowly_is_cut_off(server: LimitedServer):
    body_length = 4096  # announced, within FACESR_MAX_UPLOAD_BYTES, never all sent
    head = (
        "POST /v1/super-resolve HTTP/1.1\r\nHost: test\r\n"
        "Content-Type: multipart/form-data; boundary=xyz\r\n"
        f"Content-Length: {body_length}\r\n\r\n"
    ).encode()
    with _connect(server) as sock:
        sock.sendall(head + b"--xyz\r\n")
        start = time.monotonic()
        closed = False
        while time.monotonic() - start < BODY_TIMEOUT_S + SLACK_S:
            try:
                sock.sendall(b"a")
                sock.settimeout(0.1)
                data = sock.recv(65536)
                if data == b"" or data.startswith(b"HTTP/1.1 "):
                    closed = data == b"" or _closed_by_server(sock, within_s=0.5) is not None
                    break
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
    assert closed, "a body trickled byte by byte was held open"


def test_requests_beyond_the_connection_cap_get_503(server: LimitedServer):
    holders = [_connect(server) for _ in range(MAX_CONNECTIONS - 1)]
    try:
        for sock in holders:  # each holds a keep-alive connection the server has accepted
            sock.sendall(_request())
            assert _read_response(sock)[0] == 200
        with _connect(server) as extra:
            extra.sendall(_request())
            assert _read_response(extra)[0] == 503
    finally:
        for sock in holders:
            sock.close()
    deadline = time.monotonic() + 2
    while True:  # the server notices the closed holders on its next loop turns
        with _connect(server) as sock:
            sock.sendall(_request())
            status = _read_response(sock)[0]
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert status == 200


# -- the options `facesr serve` passes to uvicorn --------------------------------------------------------
@pytest.fixture
def captured_run(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[Any, dict[str, Any]]]]:
    import os

    for name in list(os.environ):
        if name.upper().startswith("FACESR_") and name.upper() != "FACESR_SHARED_DIR":
            monkeypatch.delenv(name)
    calls: list[tuple[Any, dict[str, Any]]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: calls.append((app, options)))
    monkeypatch.setattr("facesr.service.api.app.create_app", lambda settings: "the-app")
    environment = dict(os.environ)
    yield calls
    # `serve --workers N` exports its settings into the environment for uvicorn's processes: undo it,
    # or every later test would build its settings from them.
    os.environ.clear()
    os.environ.update(environment)


def _assert_limits(options: dict[str, Any]) -> None:
    protocol = options["http"]
    assert isinstance(protocol, functools.partial) and protocol.func is commands.LimitedH11Protocol
    assert protocol.keywords["limits"] == commands.HttpLimits(
        max_headers=30, header_timeout_s=3.0, body_timeout_s=40.0
    )
    assert options["h11_max_incomplete_event_size"] == 8192
    assert options["timeout_keep_alive"] == 7
    assert options["limit_concurrency"] == 64
    # uvicorn spawns its worker processes with the config: the protocol factory must pickle.
    assert pickle.loads(pickle.dumps(protocol)).keywords == protocol.keywords


LIMIT_ENV = {
    "FACESR_HTTP_MAX_HEADER_BYTES": "8192",
    "FACESR_HTTP_MAX_HEADERS": "30",
    "FACESR_HTTP_KEEPALIVE_TIMEOUT_S": "7",
    "FACESR_HTTP_HEADER_TIMEOUT_S": "3",
    "FACESR_HTTP_BODY_TIMEOUT_S": "40",
    "FACESR_HTTP_MAX_CONNECTIONS": "64",
}


def test_serve_passes_the_limits_to_uvicorn(captured_run: list):
    result = CliRunner().invoke(cli_app, ["serve"], env=LIMIT_ENV)

    assert result.exit_code == 0, result.output
    [(app, options)] = captured_run
    assert app == "the-app"
    _assert_limits(options)


def test_serve_with_several_processes_passes_the_limits_too(captured_run: list):
    env = {**LIMIT_ENV, "FACESR_REDIS_URL": "redis://127.0.0.1:1/0"}
    result = CliRunner().invoke(cli_app, ["serve", "--workers", "2"], env=env)

    assert result.exit_code == 0, result.output
    [(app, options)] = captured_run
    assert app == commands.APP_FACTORY and options["workers"] == 2
    _assert_limits(options)

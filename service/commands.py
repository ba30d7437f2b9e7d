"""`facesr serve` (the HTTP API) and `facesr worker` (the Redis model worker).

Both read the same `FACESR_*` settings (`facesr.service.settings.ServiceSettings`); a flag given on
the command line overrides its environment variable. A bad value, a missing checkpoint or a
missing Redis URL stops the command before it serves anything, with a message naming the setting
and exit status 2.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, cast

import h11
import typer
from pydantic import SecretStr, ValidationError
from uvicorn.protocols.http.h11_impl import H11Protocol

from facesr.service.settings import (
    ENV_PREFIX,
    ServiceSettings,
    settings_error_message,
    unknown_environment_settings,
)
from facesr.service.startup import StartupError

CONFIG_ERROR_EXIT = 2
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
APP_FACTORY = "facesr.service.api.app:create_app_from_environment"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

log = logging.getLogger("facesr.service")

# Flags shared by both commands (None = take the environment variable or the default).
RedisUrlOption = Annotated[
    str | None, typer.Option("--redis-url", help="Redis URL of the queue [env FACESR_REDIS_URL].")
]
CheckpointOption = Annotated[
    list[Path] | None,
    typer.Option("--checkpoint", help="Checkpoint to serve, repeatable [env FACESR_CHECKPOINT, comma list]."),
]
DeviceOption = Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:N [env FACESR_DEVICE].")]
DtypeOption = Annotated[str | None, typer.Option(help="fp32, bf16 or fp16 [env FACESR_DTYPE].")]
BatchOption = Annotated[
    str | None,
    typer.Option("--max-batch-size", help="Largest model batch, or auto [env FACESR_MAX_BATCH_SIZE]."),
]
RunnersOption = Annotated[
    str | None,
    typer.Option("--runners", help="Model runners side by side, or auto [env FACESR_RUNNERS]."),
]
ThreadsOption = Annotated[
    str | None,
    typer.Option(
        "--threads-per-runner", help="CPU threads of each runner, or auto [env FACESR_THREADS_PER_RUNNER]."
    ),
]
WaitOption = Annotated[
    float | None,
    typer.Option("--max-wait-ms", help="Wait for a fuller batch, ms [env FACESR_MAX_WAIT_MS]."),
]
LogLevelOption = Annotated[str | None, typer.Option(help="Log level [env FACESR_LOG_LEVEL].")]


# -- HTTP limits ------------------------------------------------------------------------------------------
# `facesr serve` always runs uvicorn's h11 implementation: it is the one that honours a cap on the request
# head (`h11_max_incomplete_event_size`). The httptools one (uvicorn's default when httptools is installed)
# has no size limit and buffered three 64 MiB headers to answer 200. What uvicorn does not offer (a
# time limit before the first request, a time limit on a request's head and body, a header count) is
# added by `LimitedH11Protocol` below.
@dataclass(frozen=True)
class HttpLimits:
    """The limits `LimitedH11Protocol` adds to uvicorn's own options (picklable: uvicorn's worker
    processes are spawned with the protocol factory)."""

    max_headers: int
    header_timeout_s: float
    body_timeout_s: float


class _HeaderCountLimit:
    """ASGI wrapper: a request with more than `max_headers` header fields gets a 431 problem document
    (and the connection closed) without reaching the app."""

    def __init__(self, app: Any, max_headers: int) -> None:
        self.app = app
        self.max_headers = max_headers

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or len(scope["headers"]) <= self.max_headers:
            await self.app(scope, receive, send)
            return
        body = json.dumps(
            {
                "type": "urn:facesr:problem:too-many-headers",
                "title": "Request Header Fields Too Large",
                "status": 431,
                "detail": f"more than {self.max_headers} header fields",
                "instance": scope["path"],
            }
        ).encode()
        headers = [
            (b"content-type", b"application/problem+json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 431, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class LimitedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with time limits on every part of a connection's life, and a header count.

    - Idle: a new connection gets uvicorn's keep-alive timer at once (uvicorn arms it only after a
      response, so a connection that never sends a byte was held for good).
    - Head: once a request's first byte is in, its request line and headers must be complete within
      `header_timeout_s` (slowloris).
    - Body: once the head is in, the body must be complete within `body_timeout_s` (slow uploads).

    A connection over a limit is closed; a request already running in the app then sees a disconnect.
    Relies on H11Protocol's `conn` (the h11.Connection), `transport` and keep-alive timer, which
    tests/service/api/test_http_limits.py exercises against the installed uvicorn.
    """

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: HttpLimits,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.app = _HeaderCountLimit(self.app, limits.max_headers)
        self._limits = limits
        self._phase: Literal["head", "body"] | None = None
        self._phase_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._enter(None)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow_request()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow_request()

    def _follow_request(self) -> None:
        """Time the part of the request now being received: its head, its body, or nothing."""
        state = self.conn.their_state
        if self.transport.is_closing():
            self._enter(None)
        elif state is h11.SEND_BODY:
            self._enter("body")
        elif state is h11.IDLE and self.conn.trailing_data[0]:
            self._enter("head")  # part of a request line or headers is buffered
        else:
            self._enter(None)

    def _enter(self, phase: Literal["head", "body"] | None) -> None:
        if phase == self._phase:
            return  # the deadline runs from the start of the phase
        if self._phase_timer is not None:
            self._phase_timer.cancel()
            self._phase_timer = None
        self._phase = phase
        if phase is not None:
            limit = self._limits.header_timeout_s if phase == "head" else self._limits.body_timeout_s
            self._phase_timer = self.loop.call_later(limit, self._phase_timed_out, phase, limit)

    def _phase_timed_out(self, phase: str, limit: float) -> None:
        self._phase_timer = None
        if not self.transport.is_closing():
            client = f"{self.client[0]}:{self.client[1]} " if self.client else ""
            self.logger.info("%sclosed: the request %s took longer than %g s", client, phase, limit)
            self.transport.close()


def uvicorn_http_options(settings: ServiceSettings) -> dict[str, Any]:
    """The uvicorn options that enforce the FACESR_HTTP_* limits (for `uvicorn.run` or `uvicorn.Config`)."""
    limits = HttpLimits(
        max_headers=settings.http_max_headers,
        header_timeout_s=settings.http_header_timeout_s,
        body_timeout_s=settings.http_body_timeout_s,
    )
    return {
        # uvicorn accepts a protocol class; a partial of one builds the same protocol with the limits.
        "http": cast("type[asyncio.Protocol]", functools.partial(LimitedH11Protocol, limits=limits)),
        "h11_max_incomplete_event_size": settings.http_max_header_bytes,
        "timeout_keep_alive": settings.http_keepalive_timeout_s,
        "limit_concurrency": settings.http_max_connections,
    }


def load_settings(**overrides: Any) -> ServiceSettings:
    """Settings from the environment with the given flags on top; exits with a clear message if invalid."""
    for note in unknown_environment_settings():
        typer.echo(f"warning: {note}", err=True)
    given = {name: value for name, value in overrides.items() if value is not None}
    try:
        return ServiceSettings(**given)
    except ValidationError as error:
        typer.echo(settings_error_message(error), err=True)
        raise typer.Exit(CONFIG_ERROR_EXIT) from None


def configure_logging(settings: ServiceSettings) -> None:
    """The log format and FACESR_LOG_LEVEL of every service process."""
    logging.basicConfig(level=settings.log_level.upper(), format=LOG_FORMAT)


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(CONFIG_ERROR_EXIT)


def _environment_value(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(_environment_value(item) for item in value)
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return str(value)


def export_settings(settings: ServiceSettings) -> None:
    """Write every explicitly set value into FACESR_* variables, so uvicorn's worker processes
    (which build their settings from the environment) get the same configuration as the flags."""
    for name in settings.model_fields_set:
        os.environ[ENV_PREFIX + name.upper()] = _environment_value(getattr(settings, name))


@contextmanager
def prometheus_multiprocess_dir() -> Iterator[Path]:
    """A clean PROMETHEUS_MULTIPROC_DIR for several API processes.

    An existing `PROMETHEUS_MULTIPROC_DIR` is used after deleting its stale `*.db` files (values of a
    previous run would otherwise be added to this one's); without one, a private temporary folder is
    created and removed on exit. Must run before the worker processes import prometheus_client.
    """
    configured = os.environ.get(MULTIPROC_ENV)
    if configured:
        path = Path(configured)
        if not path.is_dir() or not os.access(path, os.W_OK):
            raise _fail(f"{MULTIPROC_ENV}={configured} must be an existing writable folder")
        for stale in path.glob("*.db"):
            stale.unlink()
        yield path
        return
    path = Path(tempfile.mkdtemp(prefix="facesr-prometheus-"))
    os.environ[MULTIPROC_ENV] = str(path)
    try:
        yield path
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(path, ignore_errors=True)


def serve(
    host: Annotated[str | None, typer.Option(help="Interface to listen on [env FACESR_HOST].")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on [env FACESR_PORT].")] = None,
    workers: Annotated[
        int | None, typer.Option(help="API processes; more than 1 needs Redis [env FACESR_WORKERS].")
    ] = None,
    redis_url: RedisUrlOption = None,
    checkpoint: CheckpointOption = None,
    device: DeviceOption = None,
    dtype: DtypeOption = None,
    max_batch_size: BatchOption = None,
    runners: RunnersOption = None,
    threads_per_runner: ThreadsOption = None,
    max_wait_ms: WaitOption = None,
    max_queue: Annotated[
        int | None, typer.Option("--max-queue", help="Queued jobs before 429 [env FACESR_MAX_QUEUE].")
    ] = None,
    log_level: LogLevelOption = None,
) -> None:
    """Run the HTTP API. Without FACESR_REDIS_URL it also runs the queue and the model in this process
    (the embedded default, serving the bundled checkpoint); with it, only the API."""
    import uvicorn

    from facesr.service.api.app import create_app

    settings = load_settings(
        host=host,
        port=port,
        workers=workers,
        redis_url=redis_url,
        checkpoint=checkpoint,
        device=device,
        dtype=dtype,
        max_batch_size=max_batch_size,
        runners=runners,
        threads_per_runner=threads_per_runner,
        max_wait_ms=max_wait_ms,
        max_queue=max_queue,
        log_level=log_level,
    )
    configure_logging(settings)
    run_options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        **uvicorn_http_options(settings),
    }
    if settings.workers > 1:
        export_settings(settings)
        with prometheus_multiprocess_dir() as folder:
            log.info("%d API processes, Prometheus multiprocess folder %s", settings.workers, folder)
            uvicorn.run(APP_FACTORY, factory=True, workers=settings.workers, **run_options)
        return
    try:
        app = create_app(settings)
    except StartupError as error:
        raise _fail(str(error)) from None
    uvicorn.run(app, **run_options)


def worker(
    redis_url: RedisUrlOption = None,
    checkpoint: CheckpointOption = None,
    device: DeviceOption = None,
    dtype: DtypeOption = None,
    max_batch_size: BatchOption = None,
    runners: RunnersOption = None,
    threads_per_runner: ThreadsOption = None,
    max_wait_ms: WaitOption = None,
    metrics_port: Annotated[
        int | None,
        typer.Option("--metrics-port", help="Port of /metrics, 0 = off [env FACESR_METRICS_PORT]."),
    ] = None,
    log_level: LogLevelOption = None,
) -> None:
    """Run a model worker: take jobs from Redis, compute them in batches, reply (SIGTERM drains)."""
    settings = load_settings(
        redis_url=redis_url,
        checkpoint=checkpoint,
        device=device,
        dtype=dtype,
        max_batch_size=max_batch_size,
        runners=runners,
        threads_per_runner=threads_per_runner,
        max_wait_ms=max_wait_ms,
        metrics_port=metrics_port,
        log_level=log_level,
    )
    if settings.embedded:
        raise _fail(
            "`facesr worker` needs FACESR_REDIS_URL (or --redis-url); `facesr serve` alone runs embedded"
        )
    configure_logging(settings)

    if importlib.util.find_spec("torch") is None:
        raise _fail("`facesr worker` runs the model and needs the model runtime: pip install 'facesr[model]'")
    from facesr.service.worker.process import run_redis_worker

    try:
        code = run_redis_worker(settings)
    except StartupError as error:
        raise _fail(str(error)) from None
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add this area's subcommands to the main app."""
    app.command("serve")(serve)
    app.command("worker")(worker)

"""`facesr serve` (the HTTP API) and `facesr worker` (the Redis model worker).

Both read the same `FACESR_*` settings (`facesr.service.settings.ServiceSettings`); a flag given on
the command line overrides its environment variable. A bad value, a missing checkpoint or a
missing Redis URL stops the command before it serves anything, with a message naming the setting
and exit status 2.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import SecretStr, ValidationError

from facesr.service.settings import (
    ENV_PREFIX,
    ServiceSettings,
    settings_error_message,
    unknown_environment_settings,
)
from facesr.service.startup import StartupError

CONFIG_ERROR_EXIT = 2
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
    int | None, typer.Option("--max-batch-size", help="Largest model batch [env FACESR_MAX_BATCH_SIZE].")
]
WaitOption = Annotated[
    float | None,
    typer.Option("--max-wait-ms", help="Wait for a fuller batch, ms [env FACESR_MAX_WAIT_MS]."),
]
LogLevelOption = Annotated[str | None, typer.Option(help="Log level [env FACESR_LOG_LEVEL].")]


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
        max_wait_ms=max_wait_ms,
        max_queue=max_queue,
        log_level=log_level,
    )
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    run_options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
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
        max_wait_ms=max_wait_ms,
        metrics_port=metrics_port,
        log_level=log_level,
    )
    if settings.embedded:
        raise _fail(
            "`facesr worker` needs FACESR_REDIS_URL (or --redis-url); `facesr serve` alone runs embedded"
        )
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

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

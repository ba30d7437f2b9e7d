"""A Redis worker process, as `facesr worker` runs it: metrics endpoint, engines, job source, loop.

Everything it needs comes from one :class:`~facesr.service.settings.ServiceSettings`; the queue's and the
worker's settings objects are made from it and passed whole.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from http.server import ThreadingHTTPServer

from facesr.service import metrics
from facesr.service.queue.redis_source import RedisJobSource
from facesr.service.settings import ServiceSettings
from facesr.service.startup import StartupError
from facesr.service.worker.engine import load_served_engines
from facesr.service.worker.loop import Worker

log = logging.getLogger(__name__)


def _start_metrics(settings: ServiceSettings, serving: list[Worker]) -> ThreadingHTTPServer | None:
    """The worker's /metrics, /healthz and /readyz, up before the models load (None when turned off)."""
    if not settings.metrics_port:
        return None
    host = settings.metrics_host
    try:
        server = metrics.start_metrics_server(
            settings.metrics_port, host, ready=lambda: bool(serving) and serving[0].is_ready()
        )
    except OSError as error:
        raise StartupError(
            f"cannot serve metrics on {host}:{settings.metrics_port} ({error.strerror or error}); give "
            "each worker on a host its own FACESR_METRICS_PORT (--metrics-port), or 0 to turn it off"
        ) from error
    log.info("metrics on http://%s:%d/metrics", host, server.server_address[1])
    return server


def run_redis_worker(settings: ServiceSettings, on_ready: Callable[[Worker], None] | None = None) -> int:
    """Load the engines, connect to Redis and serve until SIGTERM. Returns a process exit code.

    Raises:
        StartupError: no Redis URL, the metrics port cannot be bound (found out before the models
            are loaded), or a checkpoint cannot be loaded.
    """
    if settings.embedded:
        raise StartupError("a worker process needs FACESR_REDIS_URL; `facesr serve` alone runs embedded")
    serving: list[Worker] = []  # the metrics endpoint exists before the worker does
    server = _start_metrics(settings, serving)
    try:
        engines = load_served_engines(settings)
        source = RedisJobSource(settings.queue_settings(), events=metrics.PrometheusQueueEvents())
        worker = Worker(engines, source, settings.worker_settings())
        serving.append(worker)
        if on_ready is not None:
            on_ready(worker)
        worker.run()
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
    return 0

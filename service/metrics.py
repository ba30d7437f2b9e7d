"""Every Prometheus metric of the service (API and worker), and how to expose them.

Conventions: names as in the serving design (section 4), base units (seconds, bytes), counters end in
``_total``. Histogram buckets: latencies from 1 ms to 60 s; batch sizes 1, 2, 4, ... 256.

Several processes (uvicorn ``--workers N``): set ``PROMETHEUS_MULTIPROC_DIR`` to an empty, writable folder
BEFORE the processes start (prometheus_client picks its storage when it is first imported). Each process then
writes its values to memory-mapped files there and :func:`render_latest` aggregates all of them, so one
scrape of any process sees the whole service. Gauges say how to aggregate (``multiprocess_mode``): in-flight
requests are summed over live processes, the queue depth (the same queue seen by every process) takes the
most recent reading. Call :func:`mark_process_dead` from the process manager when a process exits; as a
killed process cannot do so itself, each API process also calls :func:`mark_dead_processes` when it starts.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Literal

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics_core import Metric

from facesr.service.queue.events import QueueEvents

if TYPE_CHECKING:
    from facesr.service.worker.layout import RunnerLayout

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_SIZE_BUCKETS = tuple(float(2**i) for i in range(9))  # 1, 2, 4, ..., 256

# -- API ---------------------------------------------------------------------------------------------
HTTP_REQUESTS = Counter(
    "facesr_http_requests_total",
    "HTTP requests answered, by route template and status code.",
    ["route", "code"],
)
REQUEST_DURATION = Histogram(
    "facesr_request_duration_seconds",
    "Time from request received to response ready, by route template.",
    ["route"],
    buckets=LATENCY_BUCKETS,
)
REJECTED = Counter(
    "facesr_rejected_total",
    "Requests refused before queueing (e.g. queue_full, unauthorized, too_large, bad_input).",
    ["reason"],
)
REQUEST_FAILURES = Counter(
    "facesr_request_failures_total",
    "Admitted requests that did not get an image (deadline, cancelled, backend, oom, bad_input, internal).",
    ["reason"],
)
INFLIGHT_REQUESTS = Gauge(
    "facesr_inflight_requests", "Requests being handled right now.", multiprocess_mode="livesum"
)
QUEUE_DEPTH = Gauge(
    "facesr_queue_depth",
    "Jobs admitted and not yet answered (waiting plus being computed), as last seen by the API.",
    # Each API process refreshes it only when it answers a scrape or a probe; the newest reading is
    # the current depth, while the largest one may be a stale burst seen by a process scraped long ago.
    multiprocess_mode="livemostrecent",
)
LATE_REPLIES = Counter(
    "facesr_late_replies_total",
    "Replies that arrived for a request nobody waits for any more (deadline passed or client gone).",
)

# -- worker ------------------------------------------------------------------------------------------
QUEUE_WAIT = Histogram(
    "facesr_queue_wait_seconds",
    "Time a job spent queued: from admission to the start of its batch's computation.",
    buckets=LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram("facesr_batch_size", "Jobs per batch sent to the model.", buckets=BATCH_SIZE_BUCKETS)
BATCHES = Counter("facesr_batches_total", "Batches sent to the model.")
INFERENCES = Counter(
    "facesr_inferences_total", "Faces sent to the model (mean batch size = inferences / batches)."
)
COMPUTE_SECONDS = Histogram(
    "facesr_compute_seconds",
    "Worker time per batch by phase: prepare (bytes to array), model (forward incl. retries), "
    "package (arrays to reply bytes), reply (send and acknowledge).",
    ["phase"],
    buckets=LATENCY_BUCKETS,
)
REDELIVERED = Counter(
    "facesr_redelivered_total", "Jobs taken over from a worker that stopped answering (XAUTOCLAIM)."
)
DEAD_LETTERED = Counter(
    "facesr_dead_lettered_total", "Jobs moved to the dead-letter stream after too many deliveries."
)
# Exposed by every process: workers read job entries, API processes read heartbeats and replies.
MALFORMED_REDIS_DATA = Counter(
    "facesr_malformed_redis_data_total",
    "Values read back from Redis that could not be decoded and were set aside, by kind: job (stream entry, "
    "dead-lettered), heartbeat (ignored), reply (dropped).",
    ["kind"],
)
EXPIRED = Counter("facesr_expired_total", "Jobs skipped by a worker because their deadline had passed.")
CANCELLED = Counter("facesr_cancelled_total", "Jobs skipped by a worker because their caller went away.")
ITEM_ERRORS = Counter(
    "facesr_item_errors_total",
    "Jobs answered with an error by a worker (bad_input, oom, internal).",
    ["kind"],
)
OOM_SPLITS = Counter("facesr_oom_splits_total", "Batches split in halves after running out of GPU memory.")
GPU_MEMORY = Gauge(
    "facesr_gpu_memory_bytes",
    "CUDA memory of the worker process: allocated, reserved, peak_allocated.",
    ["kind"],
    multiprocess_mode="liveall",
)
WORKER_READY = Gauge(
    "facesr_worker_ready",
    "1 while the worker loop is warmed up and serving, else 0 (summed over live processes).",
    multiprocess_mode="livesum",
)
RUNNER_LAYOUT = Gauge(
    "facesr_runner_layout",
    "Always 1; labels give a worker's runner layout and how it was chosen (settings, measured, device).",
    ["device", "runners", "threads_per_runner", "max_batch_size", "chosen_by"],
    multiprocess_mode="livemax",
)
RUNNERS = Gauge(
    "facesr_runners",
    "Model runners (threads computing batches side by side) of the worker (summed over live processes).",
    multiprocess_mode="livesum",
)
MODEL_INFO = Gauge(
    "facesr_model_info",
    "Always 1; labels describe a model a worker serves.",
    ["model", "model_id", "dtype", "device"],
    multiprocess_mode="livemax",
)


def publish_layout(layout: RunnerLayout) -> None:
    """Show a worker's :class:`~facesr.service.worker.layout.RunnerLayout` (the only one per process)."""
    RUNNER_LAYOUT.clear()
    RUNNER_LAYOUT.labels(
        device=layout.device,
        runners=str(layout.runners),
        threads_per_runner=str(layout.threads_per_runner),
        max_batch_size=str(layout.max_batch_size),
        chosen_by=layout.chosen_by,
    ).set(1)
    RUNNERS.set(layout.runners)


def multiprocess_dir() -> str | None:
    """The multiprocess folder when multiprocess mode is on, else None."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


API_METRICS = (
    HTTP_REQUESTS,
    REQUEST_DURATION,
    REJECTED,
    REQUEST_FAILURES,
    INFLIGHT_REQUESTS,
    QUEUE_DEPTH,
    LATE_REPLIES,
)
WORKER_METRICS = (
    QUEUE_WAIT,
    BATCH_SIZE,
    BATCHES,
    INFERENCES,
    COMPUTE_SECONDS,
    REDELIVERED,
    DEAD_LETTERED,
    EXPIRED,
    CANCELLED,
    ITEM_ERRORS,
    OOM_SPLITS,
    GPU_MEMORY,
    WORKER_READY,
    RUNNER_LAYOUT,
    RUNNERS,
    MODEL_INFO,
)
# What a scrape target exposes: the API process in Redis mode only API metrics and a worker only worker
# metrics (a process's never-used families would read as zeros, e.g. "facesr_worker_ready 0" on the API);
# the embedded mode runs both in one process. Process and runtime metrics are always included.
Scope = Literal["api", "worker", "all"]


def _family_names(collectors: tuple[Any, ...]) -> frozenset[str]:
    return frozenset(family.name for collector in collectors for family in collector.describe())


_LEFT_OUT: dict[str, frozenset[str]] = {
    "api": _family_names(WORKER_METRICS),
    "worker": _family_names(API_METRICS),
    "all": frozenset(),
}


class _Without:
    """A collector showing what ``source`` collects except the families named in ``left_out``."""

    def __init__(self, source: CollectorRegistry, left_out: frozenset[str]) -> None:
        self.source = source
        self.left_out = left_out

    def collect(self) -> Iterator[Metric]:
        return (family for family in self.source.collect() if family.name not in self.left_out)


def render_latest(scope: Scope = "all") -> tuple[bytes, str]:
    """(body, content type) for a ``/metrics`` response of ``scope``; aggregates all processes in
    multiprocess mode."""
    if scope not in _LEFT_OUT:
        raise ValueError(f"scope must be one of {sorted(_LEFT_OUT)}, got {scope!r}")
    path = multiprocess_dir()
    registry = REGISTRY
    if path is not None:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=path)
    return generate_latest(_Without(registry, _LEFT_OUT[scope])), CONTENT_TYPE_LATEST


def mark_process_dead(pid: int) -> None:
    """Drop a finished process's live gauges (no-op outside multiprocess mode)."""
    path = multiprocess_dir()
    if path is not None:
        multiprocess.mark_process_dead(pid, path)


# prometheus_client's file for one process's ``live*`` gauges (e.g. facesr_inflight_requests: livesum).
_LIVE_GAUGE_FILE = re.compile(r"gauge_live[a-z]*_(\d+)\.db")


def _is_running(pid: int) -> bool:
    """Whether ``pid`` is a running process (a killed one not yet reaped by its parent is not)."""
    if pid == os.getpid():
        return True
    if os.name != "posix":
        return True  # no safe probe (os.kill would terminate it on Windows): keep its gauges
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            state = stat.read().rpartition(")")[2].split()
    except OSError:
        return True
    return not state or state[0] not in ("Z", "X")


def mark_dead_processes() -> list[int]:
    """Drop the live gauges of every process that wrote them and no longer runs; returns their pids.

    A process that is killed (SIGKILL, the OOM killer) never runs its shutdown, so its last values would
    stay in the multiprocess folder for good: ``facesr_inflight_requests`` would count its requests, in
    flight when it died, forever. Each API process calls this when it starts, so the replacement that
    uvicorn starts for a dead process clears the dead one's gauges. The folder must belong to processes
    of one host (one PID namespace), as ``facesr serve`` arranges. No-op outside multiprocess mode.
    """
    path = multiprocess_dir()
    if path is None:
        return []
    try:
        names = os.listdir(path)
    except OSError:
        return []
    pids = {int(found.group(1)) for name in names if (found := _LIVE_GAUGE_FILE.fullmatch(name))}
    dead = sorted(pid for pid in pids if not _is_running(pid))
    for pid in dead:
        multiprocess.mark_process_dead(pid, path)
    if dead:
        log.info("dropped the live gauges of %d process(es) that are gone: %s", len(dead), dead)
    return dead


def observe_gpu_memory(device: object) -> None:
    """Refresh ``facesr_gpu_memory_bytes`` for a CUDA device; nothing for other devices."""
    import torch  # local: the API process never needs torch for its metrics

    if not isinstance(device, torch.device) or device.type != "cuda":
        return
    GPU_MEMORY.labels(kind="allocated").set(torch.cuda.memory_allocated(device))
    GPU_MEMORY.labels(kind="reserved").set(torch.cuda.memory_reserved(device))
    GPU_MEMORY.labels(kind="peak_allocated").set(torch.cuda.max_memory_allocated(device))


class _MetricsHandler(BaseHTTPRequestHandler):
    ready: Callable[[], bool] = staticmethod(lambda: True)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            body, content_type = render_latest("worker")
            self._send(200, body, content_type)
        elif path == "/healthz":
            self._send(200, b"ok\n", "text/plain; charset=utf-8")
        elif path == "/readyz":
            ok = self.ready()
            self._send(200 if ok else 503, b"ready\n" if ok else b"not ready\n", "text/plain; charset=utf-8")
        else:
            self._send(404, b"not found\n", "text/plain; charset=utf-8")

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("metrics endpoint: " + format, *args)


def start_metrics_server(
    port: int,
    host: str,
    *,
    ready: Callable[[], bool] | None = None,
) -> ThreadingHTTPServer:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` on a daemon thread (the worker's scrape target).

    ``ready`` answers ``/readyz`` (e.g. ``worker.is_ready``). Stop with ``server.shutdown()``.
    """
    handler = type("MetricsHandler", (_MetricsHandler,), {"ready": staticmethod(ready or (lambda: True))})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="facesr-metrics-http", daemon=True).start()
    return server


class PrometheusQueueEvents(QueueEvents):
    """The queue's events as this module's counters (passed to the queue by the service wiring)."""

    def late_reply(self) -> None:
        LATE_REPLIES.inc()

    def redelivered(self, count: int) -> None:
        REDELIVERED.inc(count)

    def dead_lettered(self, count: int) -> None:
        DEAD_LETTERED.inc(count)

    def malformed(self, kind: str) -> None:
        MALFORMED_REDIS_DATA.labels(kind=kind).inc()

"""Fixtures for the service tests: a tiny model, live API servers on both backends, image factories.

Every API test talks HTTP to a real uvicorn server on a free port (in a thread of the test process),
backed either by the embedded in-process queue or by Redis with a real worker thread. In Redis mode the
API's `/metrics` shows only API metrics, as in production, so `scrape` adds what the worker thread would
expose on its own endpoint.
"""

from __future__ import annotations

import dataclasses
import io
import secrets
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from facesr.model.checkpoint import ModelCard, save_checkpoint
from facesr.model.config import DICConfig
from facesr.model.generator import DICGenerator
from facesr.model.inference import FaceSR
from facesr.service import metrics
from facesr.service.api import create_app
from facesr.service.queue.memory_backend import InProcessQueue
from facesr.service.queue.redis_backend import RedisQueue
from facesr.service.queue.redis_source import RedisJobSource
from facesr.service.queue.settings import QueueSettings
from facesr.service.settings import ServiceSettings
from facesr.service.worker.loop import Worker
from facesr.service.worker.settings import WorkerSettings

MODEL_NAME = "tiny"
# Two feedback steps instead of four: the same network, half the CPU time per face.
TINY_CONFIG = DICConfig.tiny(num_steps=2)
# Limits of the shared test servers (small, so the limit tests stay fast).
TEST_LIMITS: dict[str, Any] = {
    "max_upload_bytes": 64 * 1024,
    "max_pixels": 1_000_000,
    "max_batch_images": 4,
    "max_batch_size": 4,
    "runners": 1,  # one runner, so a held (gated) batch holds the whole worker
    "threads_per_runner": 1,
    "max_wait_ms": 2.0,
    "default_deadline_ms": 20_000,
    "warmup": "pow2",
}
SERVER_START_TIMEOUT_S = 60.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- images -------------------------------------------------------------------------------------------
def face_array(width: int = 16, height: int = 16, seed: int = 0) -> np.ndarray:
    """A deterministic smooth colour image (H x W x 3 uint8): not a face, but image-like."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = [
        127
        + 100
        * np.sin(xs / max(width, 1) * np.pi * (1 + c) + rng.uniform(0, 3))
        * np.cos(ys / max(height, 1) * np.pi * (1 + c))
        for c in range(3)
    ]
    return np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8)


def encode(array: np.ndarray, image_format: str = "PNG", **params: Any) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=image_format, **params)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny but well-formed PNG whose header announces `width` x `height` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


# -- a model whose worker can be held ------------------------------------------------------------------
class GatedEngine:
    """Delegates to a real engine, but `enhance_tensor` waits while `gate` is clear.

    Lets tests hold the worker mid-batch to fill the queue, expire deadlines or disconnect.
    """

    def __init__(self, engine: FaceSR) -> None:
        self._engine = engine
        self.gate = threading.Event()
        self.gate.set()
        self.entered = 0  # batches that reached the model (held or not)
        self.calls = 0  # batches the model computed

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def enhance_tensor(self, lr: np.ndarray, *, return_steps: bool = False) -> list[Any]:
        self.entered += 1
        self.gate.wait(timeout=30)
        self.calls += 1
        return self._engine.enhance_tensor(lr, return_steps=return_steps)


# -- servers -------------------------------------------------------------------------------------------
class LiveServer:
    """uvicorn serving an ASGI app on a free port, in a thread of the test process."""

    def __init__(self, app: Any) -> None:
        self.port = _free_port()
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", ws="none", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name=f"uvicorn-{self.port}", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test API server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


class WorkerThread:
    """A Redis worker (the production Worker class) running on a thread."""

    def __init__(self, settings: ServiceSettings, engine: Any, **options: Any) -> None:
        source = RedisJobSource(settings.queue_settings(), events=metrics.PrometheusQueueEvents())
        # Faster heartbeats and housekeeping than production, so readiness and takeover tests stay short.
        worker_settings = dataclasses.replace(
            settings.worker_settings(),
            heartbeat_interval_s=0.25,
            heartbeat_ttl_s=1.5,
            maintenance_interval_s=0.5,
            **options,
        )
        self.worker = Worker({MODEL_NAME: engine}, source, worker_settings)
        self.thread = threading.Thread(target=self.worker.run, name="facesr-test-worker", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.worker.stop()
        self.thread.join(timeout=30)


@dataclass
class RunningService:
    """A live API (+ worker) and what tests need to poke at it."""

    kind: str
    server: LiveServer
    engine: GatedEngine
    settings: ServiceSettings
    worker: WorkerThread | None = None
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.server.url, timeout=30)

    @property
    def url(self) -> str:
        return self.server.url

    def wait_ready(self, timeout_s: float = SERVER_START_TIMEOUT_S) -> None:
        wait_for_status(self.client, "/readyz", 200, timeout_s)

    def close(self) -> None:
        self.client.close()
        self.server.stop()
        if self.worker is not None:
            self.worker.stop()


def scrape(service: RunningService) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the service's scrape targets keyed by (sample name, sorted labels): the API's
    /metrics, plus in Redis mode the worker's exposition (its thread shares this process's registry)."""
    response = service.client.get("/metrics")
    assert response.status_code == 200
    text = response.text
    if service.kind == "redis":
        text += metrics.render_latest("worker")[0].decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_for_status(client: httpx.Client, path: str, status: int, timeout_s: float) -> httpx.Response:
    """Poll `path` until it answers `status`; fail with the last answer otherwise."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = client.get(path)
        if response.status_code == status or time.monotonic() > deadline:
            assert response.status_code == status, f"{path} stayed at {response.status_code}: {response.text}"
            return response
        time.sleep(0.05)


def wait_until(condition: Any, timeout_s: float = 20.0, message: str = "condition") -> None:
    """Poll `condition` every 20 ms; fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message}")
        time.sleep(0.02)


def queue_depth(service: RunningService) -> int:
    return service.client.get("/readyz").json()["queue_depth"]


@contextmanager
def held_worker(service: RunningService) -> Iterator[RunningService]:
    """The service with its worker held mid-batch; released, and the queue drained, on exit."""
    service.wait_ready()
    service.engine.gate.clear()
    try:
        yield service
    finally:
        service.engine.gate.set()
        wait_until(lambda: queue_depth(service) == 0, message="the queue to drain")


def start_embedded(engine: FaceSR, **overrides: Any) -> RunningService:
    settings = ServiceSettings(**{**TEST_LIMITS, **overrides})
    gated = GatedEngine(engine)
    backend = InProcessQueue(
        settings.queue_settings(),
        lambda source: Worker({MODEL_NAME: gated}, source, settings.worker_settings()),
        events=metrics.PrometheusQueueEvents(),
    )
    server = LiveServer(create_app(settings, backend))
    server.start()
    service = RunningService("embedded", server, gated, settings)
    service.wait_ready()
    return service


def start_redis(
    engine: FaceSR, redis_url: str, *, with_worker: bool = True, **overrides: Any
) -> RunningService:
    prefix = f"facesr-test-{secrets.token_hex(4)}"
    settings = ServiceSettings(**{**TEST_LIMITS, "redis_url": redis_url, "queue_prefix": prefix, **overrides})
    gated = GatedEngine(engine)
    backend = RedisQueue(
        settings.queue_settings(),
        events=metrics.PrometheusQueueEvents(),
        connect_timeout_s=0.5,
        command_timeout_s=1.0,
    )
    server = LiveServer(create_app(settings, backend))
    server.start()
    worker = WorkerThread(settings, gated) if with_worker else None
    service = RunningService("redis", server, gated, settings, worker)
    if worker is not None:
        worker.start()
        service.wait_ready()
    return service


# -- fixtures ------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def tiny_engine() -> FaceSR:
    return FaceSR.from_config(TINY_CONFIG, name=MODEL_NAME, device="cpu", dtype="fp32")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weights checkpoint file with a complete model card."""
    card = ModelCard(
        name=MODEL_NAME,
        description="random weights for the service tests",
        config=TINY_CONFIG.to_dict(),
        training_data="none (random initialisation)",
        licence="MIT",
        metrics={"psnr_helen50": None},
    )
    path = tmp_path_factory.mktemp("checkpoints") / "tiny.safetensors"
    save_checkpoint(path, DICGenerator(TINY_CONFIG), TINY_CONFIG, card)
    return path


@pytest.fixture(scope="session")
def embedded_service(tiny_engine: FaceSR) -> Iterator[RunningService]:
    service = start_embedded(tiny_engine)
    try:
        yield service
    finally:
        service.close()


@pytest.fixture(scope="session")
def redis_service(tiny_engine: FaceSR, redis_server: Any) -> Iterator[RunningService]:
    if redis_server.process is None or redis_server.process.poll() is not None:
        redis_server.start()
    service = start_redis(tiny_engine, redis_server.url)
    try:
        yield service
    finally:
        service.close()


@pytest.fixture(params=["embedded", pytest.param("redis", marks=pytest.mark.redis)])
def service(request: pytest.FixtureRequest) -> RunningService:
    """The shared live service, once per backend."""
    running: RunningService = request.getfixturevalue(f"{request.param}_service")
    running.engine.gate.set()
    if running.kind == "redis":
        server = request.getfixturevalue("redis_server")
        if server.process is None or server.process.poll() is not None:
            server.start()
    running.wait_ready()
    return running


@pytest.fixture
def png_face() -> bytes:
    return encode(face_array(16, 16))


def queue_settings(redis_url: str = "", **overrides: Any) -> QueueSettings:
    """The queue settings the service would build from TEST_LIMITS, with some fields replaced."""
    return dataclasses.replace(
        ServiceSettings(**TEST_LIMITS, redis_url=redis_url).queue_settings(), **overrides
    )


def worker_settings(**overrides: Any) -> WorkerSettings:
    """The worker settings the service would build from TEST_LIMITS, with some fields replaced."""
    return dataclasses.replace(ServiceSettings(**TEST_LIMITS).worker_settings(), **overrides)

"""Real worker processes (``facesr worker``, as operators run it) killed or terminated in mid-batch."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import redis
from prometheus_client import REGISTRY

from facesr.model.checkpoint import save_checkpoint
from facesr.model.config import DICConfig
from facesr.model.generator import DICGenerator
from facesr.model.inference import FaceSR
from facesr.service import metrics
from facesr.service.queue import Job, JobOptions, JobResult
from facesr.service.queue.keys import GROUP, Keys
from facesr.service.queue.redis_backend import RedisQueue
from facesr.service.queue.redis_source import RedisJobSource
from facesr.service.worker.loop import Worker
from tests.service.conftest import queue_settings, worker_settings

pytestmark = [pytest.mark.redis, pytest.mark.slow]
MODEL = "tiny"
REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    config = DICConfig.tiny()
    save_checkpoint(path, DICGenerator(config), config, {"name": MODEL, "config": config.to_dict()})
    return path


@pytest.fixture(scope="module")
def engine(checkpoint: Path) -> FaceSR:
    return FaceSR.from_checkpoint(checkpoint, device="cpu")


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def face(colour: int) -> np.ndarray:
    ramp = np.add.outer(np.arange(16), np.arange(16)) * 6
    return ((np.stack([ramp.T, ramp, np.full((16, 16), colour)], -1) + colour) % 256).astype(np.uint8)


def jobs(count: int) -> list[Job]:
    now = time.time()
    return [Job(f"r{i}", MODEL, face(20 * i), JobOptions(), now, now + 120) for i in range(count)]


@contextmanager
def worker_process(
    redis_url: str, prefix: str, checkpoint: Path, log: Path, batch: int
) -> Iterator[subprocess.Popen]:
    # Started the way operators start it: the `facesr worker` console script, flags and FACESR_* variables.
    command = [
        str(Path(sys.executable).with_name("facesr")), "worker",
        "--redis-url", redis_url, "--checkpoint", str(checkpoint), "--device", "cpu",
        "--max-batch-size", str(batch), "--max-wait-ms", "50", "--metrics-port", "0",
    ]  # fmt: skip
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FACESR_")},
        "OMP_NUM_THREADS": "1",
        "FACESR_QUEUE_PREFIX": prefix,
        "FACESR_WARMUP": "pow2",
        "FACESR_RUNNERS": "1",  # a fixed layout: these tests are about faults, not the layout measurement
        "FACESR_THREADS_PER_RUNNER": "1",
        "FACESR_CLAIM_IDLE_MS": "1000",
        "FACESR_HEARTBEAT_TTL_S": "2",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


@contextmanager
def worker_thread(redis_url: str, prefix: str, engine: FaceSR) -> Iterator[Worker]:
    source = RedisJobSource(
        queue_settings(redis_url, prefix=prefix, claim_idle_ms=1000, max_batch_size=4),
        events=metrics.PrometheusQueueEvents(),
    )
    worker = Worker(
        {MODEL: engine},
        source,
        worker_settings(
            max_batch_size=4,
            max_wait_ms=50,
            warmup="pow2",
            heartbeat_interval_s=0.2,
            heartbeat_ttl_s=2.0,
            maintenance_interval_s=0.1,
        ),
    )
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(20)


async def wait_for_ready_workers(queue: RedisQueue, count: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 60
    while (await queue.status()).ready_workers < count:
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(
                f"worker process not ready (exit {process.poll()}):\n{log.read_text()[-3000:]}"
            )
        await asyncio.sleep(0.05)


async def wait_until_it_holds_jobs(client: redis.asyncio.Redis, stream: str) -> int:
    """Poll until some consumer has entries delivered but not acknowledged (a batch in flight)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        summary = await client.xpending(stream, GROUP)
        if summary["pending"]:
            return int(summary["pending"])
        await asyncio.sleep(0.002)
    raise AssertionError("the worker never took a batch")


def metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def assert_faces_match(results: list[JobResult], submitted: list[Job], engine: FaceSR) -> None:
    direct = engine.enhance_tensor(np.stack([j.lr_rgb for j in submitted]))
    for result, job, expected in zip(results, submitted, direct, strict=True):
        assert result.ok, result.error_message
        assert result.request_id == job.request_id
        image = result.sr_rgb.astype(int)
        assert np.abs(image - expected.image).max() <= 1


def test_sigkill_mid_batch_loses_nothing_another_worker_takes_over(
    redis_url: str, prefix: str, checkpoint: Path, engine: FaceSR, tmp_path: Path
) -> None:
    submitted = jobs(12)
    stream = Keys(prefix).jobs(MODEL)
    log = tmp_path / "worker.log"
    redelivered_before = metric("facesr_redelivered_total")

    async def scenario(process: subprocess.Popen) -> tuple[list[JobResult], int, str]:
        queue = RedisQueue(queue_settings(redis_url, prefix=prefix), events=metrics.PrometheusQueueEvents())
        await queue.start()
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            await wait_for_ready_workers(queue, 1, process, log)
            futures = [await queue.submit(j) for j in submitted]
            held = await wait_until_it_holds_jobs(client, stream)
            process.send_signal(signal.SIGKILL)  # mid-batch: entries delivered, not acknowledged
            await asyncio.to_thread(process.wait, 10)
            with worker_thread(redis_url, prefix, engine) as survivor:
                results = await asyncio.wait_for(asyncio.gather(*futures), 60)
            return list(results), held, survivor.worker_id
        finally:
            await client.aclose()
            await queue.close()

    with worker_process(redis_url, prefix, checkpoint, log, batch=4) as process:
        results, held, survivor_id = asyncio.run(scenario(process))

    assert process.returncode == -signal.SIGKILL
    assert held >= 1
    assert_faces_match(results, submitted, engine)
    assert sum(r.worker_id == survivor_id for r in results) >= held  # the survivor answered the held ones
    assert metric("facesr_redelivered_total") - redelivered_before >= held
    with redis.Redis.from_url(redis_url) as client:
        assert client.xlen(stream) == 0 and client.xpending(stream, GROUP)["pending"] == 0


def test_sigterm_finishes_and_acknowledges_the_batch_then_exits_cleanly(
    redis_url: str, prefix: str, checkpoint: Path, engine: FaceSR, tmp_path: Path
) -> None:
    submitted = jobs(10)
    keys = Keys(prefix)
    stream = keys.jobs(MODEL)
    log = tmp_path / "worker.log"

    async def scenario(process: subprocess.Popen) -> tuple[int, int, int, list[JobResult]]:
        queue = RedisQueue(queue_settings(redis_url, prefix=prefix), events=metrics.PrometheusQueueEvents())
        await queue.start()
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            await wait_for_ready_workers(queue, 1, process, log)
            futures = [await queue.submit(j) for j in submitted]
            await wait_until_it_holds_jobs(client, stream)
            process.send_signal(signal.SIGTERM)
            await asyncio.to_thread(process.wait, 30)
            await asyncio.sleep(0.2)  # let the last replies reach the dispatcher
            answered = sum(f.done() for f in futures)
            pending = (await client.xpending(stream, GROUP))["pending"]
            waiting = await client.xlen(stream)
            with worker_thread(redis_url, prefix, engine):  # the rest is served by whoever comes next
                results = await asyncio.wait_for(asyncio.gather(*futures), 60)
            return answered, pending, waiting, list(results)
        finally:
            await client.aclose()
            await queue.close()

    with worker_process(redis_url, prefix, checkpoint, log, batch=2) as process:
        answered, pending, waiting, results = asyncio.run(scenario(process))

    output = log.read_text()
    assert process.returncode == 0, output[-3000:]
    assert "received SIGTERM" in output
    assert answered >= 1, "the batch in flight at SIGTERM must be finished"
    assert pending == 0, "everything the worker took must be acknowledged"
    assert answered + waiting == len(submitted), "nothing lost, nothing half-done"
    assert_faces_match(results, submitted, engine)
    with redis.Redis.from_url(redis_url) as client:
        assert client.xlen(stream) == 0

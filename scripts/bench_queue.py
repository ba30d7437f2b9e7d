#!/usr/bin/env python
"""Measure what the queue costs: one hop (API -> Redis -> worker -> Redis -> API) with a no-op model.

The worker runs in its own process (as in production) with an engine that returns blank faces instantly,
so every millisecond measured is queue overhead: encoding, Redis round trips, batching, reply dispatch.
Closed loop at several concurrency levels; prints latency percentiles, throughput and mean batch size,
for the Redis backend and the in-process backend. Not a test: numbers vary with the machine.

    python scripts/bench_queue.py                      # starts a throwaway redis-server on a free port
    python scripts/bench_queue.py --redis-url redis://127.0.0.1:6379/0 --requests 4000
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from facesr.model.config import LR_SIZE
from facesr.service.queue import Job, JobOptions, QueueBackend
from facesr.service.queue.memory_backend import InProcessQueue
from facesr.service.queue.redis_backend import RedisQueue
from facesr.service.settings import ServiceSettings

MODEL = "noop"


@dataclass
class _Card:
    name: str = MODEL

    def model_dump(self, mode: str = "json") -> dict[str, Any]:
        return {"name": self.name, "description": "returns blank faces instantly (benchmark only)"}


@dataclass
class _Face:
    image: np.ndarray
    landmarks: np.ndarray
    confidence: np.ndarray
    steps: None = None


class NoOpEngine:
    """Satisfies the worker's engine protocol; costs only the allocation of its outputs."""

    model_id = "noop-0"
    card = _Card()

    def __init__(self) -> None:
        import torch

        from facesr.model.config import DICConfig

        self.device, self.dtype = torch.device("cpu"), torch.float32
        self.config = DICConfig.tiny()
        self._image = np.zeros((self.config.hr_size, self.config.hr_size, 3), np.uint8)
        self._landmarks = np.zeros((self.config.num_keypoints, 2), np.float32)
        self._confidence = np.ones(self.config.num_keypoints, np.float32)

    def enhance_tensor(self, lr: np.ndarray, *, return_steps: bool = False) -> list[_Face]:
        return [_Face(self._image, self._landmarks, self._confidence) for _ in range(len(lr))]


def _settings(url: str, prefix: str, max_batch_size: int, max_wait_ms: float) -> ServiceSettings:
    """The service settings of the benchmark (the one place the queue's and worker's knobs come from)."""
    return ServiceSettings(
        redis_url=url,
        queue_prefix=prefix,
        max_queue=10_000,
        max_batch_size=max_batch_size,
        runners=1,  # the queue alone: one consumer loop, as the numbers it prints assume
        threads_per_runner=1,
        max_wait_ms=max_wait_ms,
    )


def _serve_noop(url: str, prefix: str, max_batch_size: int, max_wait_ms: float) -> None:
    """Child process: a Redis worker with the no-op engine, until SIGTERM."""
    from facesr.service.queue.redis_source import RedisJobSource
    from facesr.service.worker.loop import Worker

    settings = _settings(url, prefix, max_batch_size, max_wait_ms)
    source = RedisJobSource(settings.queue_settings())
    Worker({MODEL: NoOpEngine()}, source, settings.worker_settings()).run()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_redis(workdir: str) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found: install it or pass --redis-url")
    port = _free_port()
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = subprocess.Popen(  # noqa: S603 - a fixed command line for the local redis-server binary
        [*command, "--dir", workdir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return process, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit("redis-server did not start")


async def _closed_loop(queue: QueueBackend, concurrency: int, total: int) -> tuple[list[float], list[float]]:
    """``concurrency`` clients each submit-and-wait until ``total`` requests are done."""
    lr = np.zeros((LR_SIZE, LR_SIZE, 3), np.uint8)
    latencies: list[float] = []
    batch_sizes: list[float] = []
    remaining = total

    async def client() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            now = time.time()
            started = time.perf_counter()
            future = await queue.submit(Job(uuid.uuid4().hex, MODEL, lr, JobOptions(), now, now + 30))
            result = await future
            latencies.append(time.perf_counter() - started)
            if not result.ok:
                raise RuntimeError(f"{result.error_kind}: {result.error_message}")
            batch_sizes.append(result.timings.get("batch_size", 1.0))

    await asyncio.gather(*[client() for _ in range(concurrency)])
    return latencies, batch_sizes


def _report(label: str, concurrency: int, latencies: list[float], batches: list[float], wall: float) -> None:
    ms = sorted(x * 1000 for x in latencies)
    pct = {p: ms[min(len(ms) - 1, int(p / 100 * len(ms)))] for p in (50, 90, 99)}
    print(
        f"{label:<10} c={concurrency:<4} {len(ms) / wall:8.0f} req/s   "
        f"p50 {pct[50]:6.2f} ms  p90 {pct[90]:6.2f} ms  p99 {pct[99]:6.2f} ms   "
        f"mean batch {statistics.fmean(batches):5.2f}"
    )


async def _bench(queue: QueueBackend, label: str, levels: list[int], requests: int) -> None:
    await queue.start()
    try:
        deadline = time.monotonic() + 60
        while (await queue.status()).ready_workers < 1:
            if time.monotonic() > deadline:
                raise SystemExit(f"{label}: no ready worker after 60 s")
            await asyncio.sleep(0.05)
        await _closed_loop(queue, 4, 200)  # warm-up: connections, scripts, allocator
        for concurrency in levels:
            started = time.perf_counter()
            latencies, batches = await _closed_loop(queue, concurrency, requests)
            _report(label, concurrency, latencies, batches, time.perf_counter() - started)
    finally:
        await queue.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--redis-url", help="use this Redis instead of starting a throwaway redis-server")
    parser.add_argument("--requests", type=int, default=2000, help="requests per concurrency level")
    parser.add_argument("--concurrency", default="1,8,64", help="comma-separated closed-loop client counts")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    parser.add_argument("--skip-inprocess", action="store_true")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    with tempfile.TemporaryDirectory() as workdir:
        redis_process = None
        url = args.redis_url
        if url is None:
            redis_process, url = _start_redis(workdir)
        prefix = f"bench{uuid.uuid4().hex[:8]}"
        context = multiprocessing.get_context("spawn")
        worker = context.Process(
            target=_serve_noop, args=(url, prefix, args.max_batch_size, args.max_wait_ms), daemon=True
        )
        worker.start()
        try:
            print(f"no-op engine; max batch {args.max_batch_size}, max wait {args.max_wait_ms} ms")
            settings = _settings(url, prefix, args.max_batch_size, args.max_wait_ms)
            asyncio.run(_bench(RedisQueue(settings.queue_settings()), "redis", levels, args.requests))
            if not args.skip_inprocess:
                from facesr.service.worker.loop import Worker

                inprocess = InProcessQueue(
                    settings.queue_settings(),
                    lambda source: Worker({MODEL: NoOpEngine()}, source, settings.worker_settings()),
                )
                asyncio.run(_bench(inprocess, "in-process", levels, args.requests))
        finally:
            worker.terminate()
            worker.join(10)
            if redis_process is not None:
                redis_process.terminate()
                redis_process.wait(10)


if __name__ == "__main__":
    main()

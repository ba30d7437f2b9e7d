"""HTTP load for the benchmark: closed loop (N clients back to back) and open loop (Poisson arrivals).

Latency is measured from when a request was due, not when it was sent: in the open loop a request that
the client could only send late still counts its wait (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

OK, TOO_MANY = 200, 429
PERCENTILES = (50, 90, 95, 99)


@dataclass(frozen=True)
class Sample:
    """One request: when it was due and when it completed (perf_counter seconds), and its status
    (0 = transport error)."""

    due: float
    done: float
    status: int

    @property
    def latency_s(self) -> float:
        return self.done - self.due


def latency_percentiles_ms(samples: list[Sample], status: int = OK) -> dict[str, float | None]:
    """p50/p90/p95/p99 in ms of the samples with ``status`` (None when there are none)."""
    latencies = [s.latency_s * 1000 for s in samples if s.status == status]
    if not latencies:
        return {f"p{p}_ms": None for p in PERCENTILES}
    values = np.percentile(latencies, PERCENTILES)
    return {f"p{p}_ms": round(float(v), 1) for p, v in zip(PERCENTILES, values, strict=True)}


def summarize(samples: list[Sample], seconds: float) -> dict[str, Any]:
    """Throughput (answered 200 per second), latency percentiles, errors and 429 rejections."""
    ok = sum(1 for s in samples if s.status == OK)
    rejected = sum(1 for s in samples if s.status == TOO_MANY)
    statuses: dict[str, int] = {}
    for s in samples:
        statuses[str(s.status)] = statuses.get(str(s.status), 0) + 1
    return {
        "requests": len(samples),
        "req_per_s": round(ok / seconds, 2) if seconds > 0 else 0.0,
        **latency_percentiles_ms(samples),
        "errors": len(samples) - ok - rejected,
        "rejected": rejected,
        "rejected_fraction": round(rejected / len(samples), 5) if samples else 0.0,
        "rejected_p50_ms": latency_percentiles_ms(samples, TOO_MANY)["p50_ms"],
        "statuses": statuses,
    }


@dataclass
class Request:
    """What every request of the benchmark sends: one face as a PNG upload."""

    image_png: bytes
    accept: str = "image/png"
    api_key: str | None = None

    async def send(self, client: httpx.AsyncClient) -> int:
        headers = {"Accept": self.accept, **({"X-API-Key": self.api_key} if self.api_key else {})}
        try:
            response = await client.post(
                "/v1/super-resolve",
                files={"image": ("face.png", self.image_png, "image/png")},
                headers=headers,
            )
        except httpx.HTTPError:
            return 0
        return response.status_code


def make_client(base_url: str, connections: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits)


@dataclass
class Windows:
    """The closed loop's measured windows: per window its samples, how long it really lasted, and the
    counters at its start and end."""

    samples: list[list[Sample]] = field(default_factory=list)
    durations: list[float] = field(default_factory=list)  # seconds, as measured (a sleep can overrun)
    counters: list[Any] = field(default_factory=list)  # len(samples) + 1 snapshots

    def add(self, samples: list[Sample], seconds: float) -> None:
        self.samples.append(samples)
        self.durations.append(seconds)

    def rate(self, index: int) -> float:
        return sum(1 for s in self.samples[index] if s.status == OK) / self.durations[index]

    def agree(self, last: int = 3, within: float = 0.10) -> bool:
        """True when the last ``last`` windows' throughputs are within ``within`` of their mean."""
        if len(self.samples) < last:
            return False
        rates = [self.rate(i) for i in range(len(self.samples) - last, len(self.samples))]
        mean = sum(rates) / len(rates)
        return mean > 0 and (max(rates) - min(rates)) <= within * mean


async def closed_loop(
    base_url: str,
    request: Request,
    concurrency: int,
    *,
    warmup_s: float,
    window_s: float,
    max_windows: int,
    read_counters: Callable[[], Awaitable[Any]],
) -> tuple[Windows, bool]:
    """``concurrency`` clients send back to back; after ``warmup_s``, windows of ``window_s`` until the
    last three agree within 10% (or ``max_windows``). Returns the windows and whether they agreed."""
    stop = asyncio.Event()
    completed: list[Sample] = []

    async def client_loop(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            due = time.perf_counter()
            status = await request.send(client)
            completed.append(Sample(due, time.perf_counter(), status))

    windows = Windows()
    async with make_client(base_url, concurrency + 2) as client:
        tasks = [asyncio.create_task(client_loop(client)) for _ in range(concurrency)]
        try:
            await asyncio.sleep(warmup_s)
            windows.counters.append(await read_counters())
            while len(windows.samples) < max_windows and not windows.agree():
                opened = time.perf_counter()
                first = len(completed)
                await asyncio.sleep(window_s)
                closed = time.perf_counter()
                windows.add([s for s in completed[first:] if opened <= s.done <= closed], closed - opened)
                windows.counters.append(await read_counters())
        finally:
            stop.set()
            await asyncio.gather(*tasks)
    return windows, windows.agree()


async def open_loop(
    base_url: str, request: Request, rate: float, duration_s: float, *, seed: int = 0
) -> tuple[list[Sample], float]:
    """Requests at Poisson times of mean ``rate`` per second for ``duration_s``, each sent when due
    whatever the others are doing. Returns every sample and the seconds from the start of the arrivals to
    the last answer (at least ``duration_s``)."""
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / rate, size=int(rate * duration_s * 2) + 16)
    offsets = np.cumsum(gaps)
    offsets = offsets[offsets < duration_s]
    samples: list[Sample] = []
    async with make_client(base_url, max(8, int(rate * 4))) as client:
        start = time.perf_counter()

        async def one(offset: float) -> None:
            due = start + float(offset)
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            status = await request.send(client)
            samples.append(Sample(due, time.perf_counter(), status))

        await asyncio.gather(*(one(offset) for offset in offsets))
    # Answers are counted over the time they took to come back, queued ones included (not the arrival span).
    span = max((s.done for s in samples), default=start + duration_s) - start
    return samples, max(span, duration_s)

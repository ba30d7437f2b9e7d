#!/usr/bin/env python3
"""Closed-loop load test of a running facesr API: throughput, latency percentiles, errors, batch size.

For each concurrency level (default 1, 2, 4, 8, 16) N clients send POST /v1/super-resolve back to
back for `--duration` seconds after a `--warmup`. Printed per level: requests/s, p50/p90/p99
latency, error rate (any non-200, with the statuses seen), and the mean model batch size over the
window, from the worker's `facesr_inferences_total / facesr_batches_total` (the API's own /metrics
in the embedded mode; pass the worker's `--metrics-url` in Redis mode).

This is a measurement, not a test: run it against a server you started, e.g.

    facesr serve --port 8000 &
    python scripts/bench_service.py --url http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import asyncio
import io
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families


@dataclass
class LevelResult:
    concurrency: int
    seconds: float
    latencies_s: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    mean_batch: float | None = None

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    @property
    def errors(self) -> int:
        return self.requests - self.statuses.get(200, 0)


def synthetic_face(size: int) -> bytes:
    """A smooth colour pattern as PNG (the service does not care whether it is a real face)."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
    rgb = np.stack([np.sin(xs * 6), np.cos(ys * 5), np.sin((xs + ys) * 4)], axis=-1)
    buffer = io.BytesIO()
    Image.fromarray(((rgb + 1) * 127.5).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


async def batch_counters(client: httpx.AsyncClient, metrics_url: str) -> tuple[float, float] | None:
    """(inferences, batches) from a Prometheus endpoint, or None when it does not export them."""
    try:
        text = (await client.get(metrics_url)).text
    except httpx.HTTPError:
        return None
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in ("facesr_inferences_total", "facesr_batches_total"):
                values[sample.name] = values.get(sample.name, 0.0) + sample.value
    if len(values) < 2:
        return None
    return values["facesr_inferences_total"], values["facesr_batches_total"]


async def client_loop(
    client: httpx.AsyncClient,
    request: dict,
    stop_at: float,
    record_from: float,
    result: LevelResult,
) -> None:
    while (started := time.perf_counter()) < stop_at:
        try:
            response = await client.post(**request)
            status = response.status_code
        except httpx.HTTPError:
            status = 0  # transport error
        finished = time.perf_counter()
        if started >= record_from:
            result.latencies_s.append(finished - started)
            result.statuses[status] += 1


async def run_level(args: argparse.Namespace, image: bytes, concurrency: int) -> LevelResult:
    headers = {"Accept": args.accept}
    if args.api_key:
        headers["X-API-Key"] = args.api_key
    request = {
        "url": "/v1/super-resolve",
        "files": {"image": ("face.png", image, "image/png")},
        "headers": headers,
    }
    limits = httpx.Limits(max_connections=concurrency + 2, max_keepalive_connections=concurrency + 2)
    async with httpx.AsyncClient(base_url=args.url, timeout=60, limits=limits) as client:
        result = LevelResult(concurrency=concurrency, seconds=args.duration)
        start = time.perf_counter()
        record_from = start + args.warmup
        stop_at = record_from + args.duration
        await asyncio.sleep(0)
        # Counters are read when the measured window opens and closes.
        loops = [
            asyncio.create_task(client_loop(client, request, stop_at, record_from, result))
            for _ in range(concurrency)
        ]
        await asyncio.sleep(args.warmup)
        before = await batch_counters(client, args.metrics_url)
        await asyncio.gather(*loops)
        after = await batch_counters(client, args.metrics_url)
    if before and after and after[1] > before[1]:
        result.mean_batch = (after[0] - before[0]) / (after[1] - before[1])
    return result


def report(result: LevelResult) -> str:
    latencies_ms = np.asarray(result.latencies_s) * 1000 if result.latencies_s else np.asarray([np.nan])
    p50, p90, p99 = np.percentile(latencies_ms, [50, 90, 99])
    rate = result.requests / result.seconds
    error_rate = result.errors / result.requests if result.requests else 0.0
    statuses = ",".join(f"{code}:{count}" for code, count in sorted(result.statuses.items()) if code != 200)
    batch = f"{result.mean_batch:.2f}" if result.mean_batch is not None else "n/a"
    return (
        f"{result.concurrency:>5} {rate:>9.1f} {p50:>9.1f} {p90:>9.1f} {p99:>9.1f} "
        f"{error_rate:>7.2%} {batch:>6}  {statuses}"
    )


async def main(args: argparse.Namespace) -> None:
    image = Path(args.image).read_bytes() if args.image else synthetic_face(args.size)
    async with httpx.AsyncClient(base_url=args.url, timeout=10) as probe:
        ready = await probe.get("/readyz")
        if ready.status_code != 200:
            raise SystemExit(f"{args.url}/readyz answers {ready.status_code}: {ready.text}")
        print(f"server: {args.url}  models: {', '.join(ready.json().get('models', []))}")
    print(f"upload: {len(image)} bytes, Accept: {args.accept}, {args.duration:.0f} s per level")
    print(f"{'conc':>5} {'req/s':>9} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'errors':>7} {'batch':>6}")
    for concurrency in args.concurrency:
        print(report(await run_level(args, image, concurrency)), flush=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="base URL of the API")
    parser.add_argument(
        "--concurrency",
        type=lambda text: [int(part) for part in text.split(",")],
        default=[1, 2, 4, 8, 16],
        help="comma-separated client counts (default 1,2,4,8,16)",
    )
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each level")
    parser.add_argument("--image", help="upload this file instead of a synthetic face")
    parser.add_argument("--size", type=int, default=16, help="side of the synthetic face (16 = no resize)")
    parser.add_argument("--accept", default="image/png", help="Accept header (image/png or application/json)")
    parser.add_argument("--api-key", help="sent as X-API-Key")
    parser.add_argument(
        "--metrics-url", help="Prometheus endpoint with the worker counters (default: URL/metrics)"
    )
    args = parser.parse_args()
    args.metrics_url = args.metrics_url or f"{args.url.rstrip('/')}/metrics"
    return args


if __name__ == "__main__":
    asyncio.run(main(parse_args()))

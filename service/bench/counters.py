"""The worker's own counters, read from its Prometheus endpoints: how the service itself saw the load.

Differences of two readings give the mean batch size (inferences / batches) and the mean time per job of
each phase: queue wait, and the worker's prepare / model / package / reply phases per batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

PHASES = ("prepare", "model", "package", "reply")


@dataclass(frozen=True)
class Counters:
    """Cumulative worker counters summed over scrape targets (``ok`` False when a target failed)."""

    inferences: float = 0.0
    batches: float = 0.0
    queue_wait_sum: float = 0.0
    queue_wait_count: float = 0.0
    phase_sum: dict[str, float] = field(default_factory=dict)
    ok: bool = True


def parse(text: str) -> Counters:
    """Counters from one exposition text."""
    values: dict[str, float] = {}
    phases: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "facesr_compute_seconds_sum":
                phase = sample.labels.get("phase", "")
                phases[phase] = phases.get(phase, 0.0) + sample.value
            elif sample.name in (
                "facesr_inferences_total",
                "facesr_batches_total",
                "facesr_queue_wait_seconds_sum",
                "facesr_queue_wait_seconds_count",
            ):
                values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return Counters(
        inferences=values.get("facesr_inferences_total", 0.0),
        batches=values.get("facesr_batches_total", 0.0),
        queue_wait_sum=values.get("facesr_queue_wait_seconds_sum", 0.0),
        queue_wait_count=values.get("facesr_queue_wait_seconds_count", 0.0),
        phase_sum=phases,
    )


async def read(urls: Sequence[str]) -> Counters:
    """The sum of the counters of every ``/metrics`` URL."""
    total = Counters()
    async with httpx.AsyncClient(timeout=10) as client:
        for url in urls:
            try:
                response = await client.get(url)
                response.raise_for_status()
            except httpx.HTTPError:
                return Counters(ok=False)
            part = parse(response.text)
            total = Counters(
                inferences=total.inferences + part.inferences,
                batches=total.batches + part.batches,
                queue_wait_sum=total.queue_wait_sum + part.queue_wait_sum,
                queue_wait_count=total.queue_wait_count + part.queue_wait_count,
                phase_sum={
                    phase: total.phase_sum.get(phase, 0.0) + part.phase_sum.get(phase, 0.0)
                    for phase in {*total.phase_sum, *part.phase_sum}
                },
            )
    return total


def difference(before: Counters, after: Counters) -> dict[str, Any]:
    """Mean batch and per-phase milliseconds (per batch for worker phases, per job for the queue wait)."""
    if not (before.ok and after.ok):
        return {"mean_batch": None, "phase_ms": {}}
    batches = after.batches - before.batches
    waits = after.queue_wait_count - before.queue_wait_count
    phase_ms: dict[str, float | None] = {
        "queue_wait": round(1000 * (after.queue_wait_sum - before.queue_wait_sum) / waits, 2)
        if waits
        else None
    }
    for phase in PHASES:
        spent = after.phase_sum.get(phase, 0.0) - before.phase_sum.get(phase, 0.0)
        phase_ms[phase] = round(1000 * spent / batches, 2) if batches else None
    return {
        "mean_batch": round((after.inferences - before.inferences) / batches, 2) if batches else None,
        "phase_ms": phase_ms,
    }

"""Per-request phase timings, reported in the `Server-Timing` header and the JSON body.

Phases of one image: `decode` (upload -> 16 x 16 input, API), `queue` (enqueue -> batch start,
measured by the worker), `compute` (the batch's forward pass, worker), `encode` (result -> PNG/JPEG/
WebP or base64, API). The request middleware appends `total` (arrival -> response start).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

# Worker-reported timings that are phases (seconds); anything else in JobResult.timings is not.
WORKER_PHASES = ("queue", "compute")


class PhaseTimings:
    """Ordered phase durations in seconds for one request (phases repeated in a batch add up)."""

    def __init__(self) -> None:
        self._seconds: dict[str, float] = {}

    def add(self, phase: str, seconds: float) -> None:
        self._seconds[phase] = self._seconds.get(phase, 0.0) + max(0.0, seconds)

    def add_worker_timings(self, timings: Mapping[str, float]) -> None:
        """Take the queue/compute phases from a JobResult's timings."""
        for phase in WORKER_PHASES:
            if phase in timings:
                self.add(phase, float(timings[phase]))

    @contextmanager
    def measure(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(phase, time.perf_counter() - start)

    def milliseconds(self) -> dict[str, float]:
        return {phase: round(seconds * 1000, 3) for phase, seconds in self._seconds.items()}

    def server_timing(self) -> str:
        """`decode;dur=1.2, queue;dur=3.4, ...` (durations in milliseconds, as the spec says)."""
        return server_timing_header(self._seconds)


def server_timing_header(seconds_by_phase: Mapping[str, float]) -> str:
    return ", ".join(f"{phase};dur={seconds * 1000:.3f}" for phase, seconds in seconds_by_phase.items())

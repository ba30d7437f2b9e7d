"""The worker's side of a queue: where batches come from and where answers go.

A :class:`JobSource` hides the transport (Redis Streams or an in-process deque) from the worker loop,
so both backends run the same batching, skipping, error-isolation and metrics code.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from facesr.service.queue.jobs import Job, JobResult


@dataclass(frozen=True)
class Delivery:
    """One job handed to a worker.

    ``job`` is None when the entry could not be decoded; ``error`` then says why, and the worker answers
    ``request_id`` (when known) with a ``bad_input`` error. ``handle`` identifies the entry for the
    source (stream entry id, sequence number); ``attempt`` is 1 on the first delivery.
    """

    handle: Any
    request_id: str | None
    job: Job | None
    reply_to: str | None = None
    attempt: int = 1
    error: str | None = None


@dataclass
class WorkerInfo:
    """What a worker advertises in its heartbeat (JSON-able)."""

    worker_id: str
    ready: bool
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    max_batch_size: int = 1
    runners: int = 1  # model runners taking batches side by side
    throughput: float = 0.0  # faces per second of compute, moving average (0 = not measured yet)
    batches: int = 0
    inferences: int = 0
    started_at: float = 0.0
    host: str = ""
    pid: int = 0


class JobSource(Protocol):
    """Transport used by :class:`facesr.service.worker.loop.Worker`.

    Methods are called from the worker's runner threads (several at once when it has several runners),
    except :meth:`heartbeat`, :meth:`keep_alive` and :meth:`withdraw`, which the heartbeat thread calls."""

    def open(self, worker_id: str, models: Sequence[str]) -> None:
        """Prepare to consume jobs for ``models`` (create consumer groups etc.)."""

    def next_batch(self, max_items: int, max_wait_s: float, stop: threading.Event) -> list[Delivery]:
        """Up to ``max_items`` jobs of ONE model: block at most ~1 s for the first, then collect more
        until ``max_items`` or ``max_wait_s`` after the first. Returns [] when nothing arrived."""

    def cancelled(self, deliveries: Sequence[Delivery]) -> set[str]:
        """Request ids among ``deliveries`` whose callers went away."""

    def finish(self, answered: Sequence[tuple[Delivery, JobResult]]) -> None:
        """Send each result to its caller, then acknowledge and delete the entries."""

    def release(self, deliveries: Sequence[Delivery]) -> None:
        """The worker holds these deliveries no longer, answered or not (called after every batch)."""

    def maintain(self) -> None:
        """Periodic housekeeping: take over jobs of dead workers, dead-letter exhausted ones."""

    def heartbeat(self, info: WorkerInfo, ttl_s: float) -> None:
        """Advertise this worker (readiness, models, throughput) for ``ttl_s`` seconds."""

    def keep_alive(self, deliveries: Sequence[Delivery]) -> None:
        """Mark in-flight entries as still being worked on, so nobody takes them over."""

    def withdraw(self) -> None:
        """Stop advertising this worker now (it stalled): not ready, and its jobs free to be taken over."""

    def close(self, info: WorkerInfo | None = None) -> None:
        """Withdraw the heartbeat and release connections."""

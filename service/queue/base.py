"""The contract between the web layer and a queue backend, and the errors it raises."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Protocol

from facesr.service.queue.jobs import Job, JobResult


class QueueError(Exception):
    """Base class of the queue's own errors."""


class QueueFull(QueueError):  # noqa: N818 - the name is the contract with the API layer
    """Admission refused: the queue already holds its maximum number of jobs (HTTP 429)."""

    def __init__(self, depth: int, limit: int, retry_after_s: float) -> None:
        super().__init__(f"queue full ({depth} of {limit} jobs); retry in about {retry_after_s:.1f} s")
        self.depth = depth
        self.limit = limit
        self.retry_after_s = retry_after_s


class BackendUnavailable(QueueError):  # noqa: N818 - the name is the contract with the API layer
    """The queue backend cannot be reached or is shutting down (HTTP 503)."""


class JobFailed(QueueError):  # noqa: N818 - the name is the contract with the API layer
    """A job came back with ``ok == False``; raised by :func:`raise_for_result` for callers that prefer it."""

    def __init__(self, result: JobResult) -> None:
        super().__init__(f"{result.error_kind}: {result.error_message}")
        self.result = result


def raise_for_result(result: JobResult) -> JobResult:
    """Return ``result`` when it succeeded, else raise :class:`JobFailed` carrying it."""
    if not result.ok:
        raise JobFailed(result)
    return result


@dataclass
class BackendStatus:
    """A cheap snapshot for readiness probes, the model list and the queue-depth gauge."""

    reachable: bool
    ready_workers: int
    models: dict[str, dict] = field(default_factory=dict)
    depth: int = 0
    detail: str = ""


class QueueBackend(Protocol):
    """What the API needs from a queue: submit and status. Implemented by Redis and in-process backends.

    ``submit`` returns a future that always completes: with a :class:`JobResult` (``ok`` or an error kind,
    including ``"expired"`` when the job's deadline passes first: the queue keeps the deadline, callers
    only wait), or with :class:`BackendUnavailable` when the backend is lost. Cancelling the future is the
    one way to cancel a job (the caller went away): the worker then skips it.
    """

    async def start(self) -> None:
        """Create clients and background tasks inside the running event loop."""

    async def close(self) -> None:
        """Stop background tasks, fail waiting futures with BackendUnavailable, close clients."""

    async def submit(self, job: Job) -> asyncio.Future[JobResult]:
        """Admit ``job`` atomically or raise QueueFull / BackendUnavailable."""

    async def status(self) -> BackendStatus:
        """Reachability, ready workers, advertised models and depth; fast enough for /readyz."""

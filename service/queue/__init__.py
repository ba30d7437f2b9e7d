"""A dynamic-batching job queue: Redis Streams for several processes, or in-process.

A small library: it imports no torch, no web framework and no metrics module. Its users pass in what it
needs: a :class:`QueueSettings` (built by the service settings), :class:`QueueEvents` to count what
happens, and, for the in-process queue, the worker that runs on its thread. The web layer talks only to
:class:`QueueBackend`; workers consume through a :class:`~facesr.service.queue.source.JobSource`.
"""

from facesr.service.queue.base import (
    BackendStatus,
    BackendUnavailable,
    JobFailed,
    QueueBackend,
    QueueError,
    QueueFull,
    raise_for_result,
)
from facesr.service.queue.events import QueueEvents
from facesr.service.queue.jobs import Job, JobOptions, JobResult
from facesr.service.queue.settings import QueueSettings

__all__ = [
    "BackendStatus",
    "BackendUnavailable",
    "Job",
    "JobFailed",
    "JobOptions",
    "JobResult",
    "QueueBackend",
    "QueueError",
    "QueueEvents",
    "QueueFull",
    "QueueSettings",
    "raise_for_result",
]

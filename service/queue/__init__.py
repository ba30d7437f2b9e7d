"""A dynamic-batching job queue for the model: Redis Streams for several processes, or in-process.

The web layer talks only to :class:`QueueBackend`; workers consume through a job source.
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
from facesr.service.queue.jobs import HR_BYTES, LR_BYTES, Job, JobOptions, JobResult

__all__ = [
    "HR_BYTES",
    "LR_BYTES",
    "BackendStatus",
    "BackendUnavailable",
    "Job",
    "JobFailed",
    "JobOptions",
    "JobResult",
    "QueueBackend",
    "QueueError",
    "QueueFull",
    "raise_for_result",
]

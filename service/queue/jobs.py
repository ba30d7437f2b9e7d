"""The job and result records that travel through the queue.

Inside a process they hold arrays; only the Redis codec (`codec.py`) turns them into bytes.
Conventions at this boundary:
- ``Job.lr_rgb`` is the model input: an RGB face, H x W x 3 uint8 (the model's input size, 16 x 16 for
  DIC; the worker checks it against the model it runs).
- ``JobResult.sr_rgb`` (and each of ``step_rgb``) is the output image, H x W x 3 uint8.
- ``JobResult.landmarks`` are the model's points as ``[x, y, confidence]``: output-image pixels and the
  heatmap peak in [0, 1]. ``landmark_status`` is the model's landmark verdict
  (`facesr.model.landmark_quality.LandmarkStatus`); points of a model whose landmarks failed
  evaluation are not sent.
- All times are ``time.time()`` seconds (wall clock, comparable across hosts with synchronised clocks).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Final, Literal, get_args

import numpy as np

from facesr.model.landmark_quality import LandmarkStatus

ErrorKind = Literal["expired", "cancelled", "bad_input", "oom", "dead_letter", "internal"]
ERROR_KINDS: Final[frozenset[str]] = frozenset(get_args(ErrorKind))


@dataclass(frozen=True)
class JobOptions:
    """What the caller wants back besides the final image."""

    return_steps: bool = False
    landmarks: bool = True


@dataclass(frozen=True)
class Job:
    """One face to super-resolve; ``deadline`` is absolute ``time.time()`` after which nobody waits for it."""

    request_id: str
    model: str
    lr_rgb: np.ndarray
    options: JobOptions = field(default_factory=JobOptions)
    enqueued_at: float = field(default_factory=time.time)
    deadline: float = float("inf")

    def is_expired(self, now: float | None = None) -> bool:
        """Whether nobody waits for this job any more: the one deadline rule, used by every side."""
        return self.deadline <= (time.time() if now is None else now)

    def expired_result(self, where: str, now: float | None = None) -> JobResult:
        """The ``expired`` answer for this job; ``where`` says at which point the deadline was found past."""
        return expired_result(self.request_id, self.deadline, where, now)


def expired_result(request_id: str, deadline: float, where: str, now: float | None = None) -> JobResult:
    """The ``expired`` answer to a job whose ``deadline`` passed; ``where`` says where it was noticed."""
    late = (time.time() if now is None else now) - deadline
    return JobResult.failure(request_id, "expired", f"deadline passed {max(late, 0):.3f} s {where}")


@dataclass(frozen=True)
class JobResult:
    """The outcome of one job: either ``ok`` with images, or an ``error_kind`` and a message."""

    request_id: str
    ok: bool
    sr_rgb: np.ndarray | None = None
    step_rgb: list[np.ndarray] | None = None
    landmarks: list[list[float]] | None = None
    landmark_status: LandmarkStatus | None = None
    model_id: str | None = None
    worker_id: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    error_kind: str | None = None
    error_message: str | None = None

    @classmethod
    def failure(
        cls,
        request_id: str,
        kind: ErrorKind,
        message: str,
        *,
        worker_id: str | None = None,
        timings: dict[str, float] | None = None,
    ) -> JobResult:
        """An error result; ``kind`` is one of ``ERROR_KINDS``."""
        if kind not in ERROR_KINDS:
            raise ValueError(f"unknown error kind {kind!r}")
        return cls(
            request_id=request_id,
            ok=False,
            worker_id=worker_id,
            timings=dict(timings or {}),
            error_kind=kind,
            error_message=message,
        )

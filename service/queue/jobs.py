"""The job and result records that travel through the queue (no pickle: JSON metadata + raw bytes).

Conventions at this boundary:
- ``Job.lr_rgb`` is the model input: a 16x16 RGB face, uint8, row-major HWC (768 bytes).
- ``JobResult.sr_rgb`` (and each of ``step_rgb``) is a 128x128 RGB image, uint8, row-major HWC (49152 bytes).
- ``JobResult.landmarks`` are 68 iBUG points as ``[x, y, confidence]``: output-image pixels (0..128) and
  the heatmap peak in [0, 1]. ``landmark_status`` is the model's landmark verdict ("passed", "failed",
  "unevaluated", "absent"); points of a model whose landmarks failed evaluation are not sent.
- All times are ``time.time()`` seconds (wall clock, comparable across hosts with synchronised clocks).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Final, Literal

LR_SIZE: Final = 16
HR_SIZE: Final = 128
LR_BYTES: Final = LR_SIZE * LR_SIZE * 3
HR_BYTES: Final = HR_SIZE * HR_SIZE * 3

#: What a result's ``landmark_status`` can say (the model card's verdict on its landmarks).
LANDMARK_STATUSES: Final[frozenset[str]] = frozenset({"passed", "failed", "unevaluated", "absent"})

ErrorKind = Literal["expired", "cancelled", "bad_input", "oom", "dead_letter", "internal"]
ERROR_KINDS: Final[frozenset[str]] = frozenset(
    {"expired", "cancelled", "bad_input", "oom", "dead_letter", "internal"}
)


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
    lr_rgb: bytes
    options: JobOptions = field(default_factory=JobOptions)
    enqueued_at: float = field(default_factory=time.time)
    deadline: float = float("inf")


@dataclass(frozen=True)
class JobResult:
    """The outcome of one job: either ``ok`` with images, or an ``error_kind`` and a message."""

    request_id: str
    ok: bool
    sr_rgb: bytes | None = None
    step_rgb: list[bytes] | None = None
    landmarks: list[list[float]] | None = None
    landmark_status: str | None = None
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

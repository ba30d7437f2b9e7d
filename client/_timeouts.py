"""How long a call may take: the client timeout, the request deadline, and each attempt's httpx limits.

httpx limits each phase of an attempt (connect, write, read, pool wait) separately. Without a deadline
an attempt gets the client timeout as given. With one, the read limit is what is left of the deadline
plus `DEADLINE_SLACK_S` (the service answers 504 at the deadline, and that answer needs time to arrive),
whether the client timeout is shorter or longer, and the other phases get at most what is left of it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import httpx

#: Default limit of each phase of one HTTP attempt (seconds) when the caller gives none.
DEFAULT_TIMEOUT_S = 30.0
#: Added to what is left of a deadline for the read limit of an attempt.
DEADLINE_SLACK_S = 2.0
#: Smallest limit handed to httpx: no time left still gets a limit, never "none" or a negative one.
MIN_LIMIT_S = 0.001


def as_timeout(timeout: float | httpx.Timeout | None) -> httpx.Timeout:
    """An `httpx.Timeout` from seconds (every phase), an `httpx.Timeout`, or None (no limit)."""
    if isinstance(timeout, httpx.Timeout):
        return timeout
    return httpx.Timeout(timeout)


def _cap(phase: float | None, limit_s: float) -> float:
    return limit_s if phase is None else min(phase, limit_s)


def capped(timeout: httpx.Timeout, limit_s: float) -> httpx.Timeout:
    """`timeout` with every phase at most `limit_s` seconds (a phase without a limit gets `limit_s`)."""
    limit = max(limit_s, MIN_LIMIT_S)
    return httpx.Timeout(
        connect=_cap(timeout.connect, limit),
        read=_cap(timeout.read, limit),
        write=_cap(timeout.write, limit),
        pool=_cap(timeout.pool, limit),
    )


@dataclass(frozen=True)
class Deadline:
    """The time budget of one call, retries included, sent as ``X-Deadline-Ms``.

    Attributes:
        budget_ms: the budget as the caller gave it (milliseconds).
        expires_at: when it runs out, on the `time.monotonic` clock.
    """

    budget_ms: int
    expires_at: float

    @classmethod
    def start(cls, deadline_ms: int | None) -> Deadline | None:
        """The deadline of a call starting now; None for a call without one.

        Raises:
            ValueError: `deadline_ms` is not a positive integer.
        """
        if deadline_ms is None:
            return None
        if isinstance(deadline_ms, bool) or not isinstance(deadline_ms, int) or deadline_ms < 1:
            raise ValueError(f"deadline_ms must be a positive integer (milliseconds), got {deadline_ms!r}")
        return cls(budget_ms=deadline_ms, expires_at=time.monotonic() + deadline_ms / 1000.0)

    def remaining_s(self) -> float:
        """Seconds left (negative once it has passed)."""
        return self.expires_at - time.monotonic()

    def header(self, *, first: bool) -> str:
        """The ``X-Deadline-Ms`` of an attempt: the budget as given on the first, what is left on a retry."""
        if first:
            return str(self.budget_ms)
        return str(max(1, math.floor(self.remaining_s() * 1000)))

    def allows_wait(self, delay_s: float) -> bool:
        """Whether an attempt after waiting `delay_s` would still start before the deadline."""
        return time.monotonic() + delay_s < self.expires_at

    def timeout(self, base: httpx.Timeout) -> httpx.Timeout:
        """The httpx limits of an attempt sent now: read what is left plus `DEADLINE_SLACK_S` (longer or
        shorter than `base.read`), connect, write and pool `base`'s but at most what is left."""
        remaining = max(self.remaining_s(), MIN_LIMIT_S)
        limits = capped(base, remaining)
        return httpx.Timeout(
            connect=limits.connect,
            read=remaining + DEADLINE_SLACK_S,
            write=limits.write,
            pool=limits.pool,
        )

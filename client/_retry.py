"""When a request is sent again: what is retried, how long to wait, and reading ``Retry-After``."""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass
from datetime import timezone

import httpx

#: Status codes retried (after their Retry-After): queue full, unavailable.
RETRY_STATUSES = frozenset({429, 503})
#: Transport errors retried: the connection failed or broke before an answer came. (Inference has no side
#: effects, so a request the service may have received can be sent again.) Timeouts are not retried.
RETRY_TRANSPORT_ERRORS: tuple[type[httpx.TransportError], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
)


def is_retryable(reply: httpx.Response | httpx.TransportError) -> bool:
    """Whether a failed attempt may be sent again: a 429/503 answer or a broken connection."""
    if isinstance(reply, httpx.Response):
        return reply.status_code in RETRY_STATUSES
    return isinstance(reply, RETRY_TRANSPORT_ERRORS)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After value: delay-seconds (``"2"``) or an HTTP date.

    Returns None for a missing or unreadable value; a date in the past gives 0.
    """
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(text)
    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    current = time.time() if now is None else now
    return max(0.0, moment.timestamp() - current)


@dataclass(frozen=True)
class RetryPolicy:
    """When to send a request again.

    Attributes:
        max_retries: retries after the first attempt (429/503 answers and connection errors together).
        max_wait_s: cap on the total time spent waiting between attempts of one call; a Retry-After that
            would exceed it ends the call with the error instead.
        backoff_s: first wait when the answer gives no Retry-After (or the connection failed); doubles per
            retry, with jitter, up to `max_backoff_s`.
    """

    max_retries: int = 3
    max_wait_s: float = 30.0
    backoff_s: float = 0.2
    max_backoff_s: float = 5.0

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.max_wait_s < 0:
            raise ValueError("max_retries and max_retry_wait must be >= 0")

    def backoff(self, retry: int) -> float:
        """Wait before retry number `retry` (0-based) without a Retry-After: exponential, jittered."""
        ceiling = min(self.max_backoff_s, self.backoff_s * 2**retry)
        return ceiling * (0.5 + random.random() / 2)  # noqa: S311 - jitter, not cryptography

    def next_wait(self, *, retries: int, waited_s: float, retry_after: float | None) -> float | None:
        """Seconds to wait before retry number `retries` (0-based) of a retryable failure: its
        Retry-After, else a backoff. None when the call must give up instead: the retries are used up,
        or the wait would take the call past `max_wait_s` of waiting in all."""
        if retries >= self.max_retries:
            return None
        delay = self.backoff(retries) if retry_after is None else retry_after
        if waited_s + delay > self.max_wait_s:
            return None
        return delay

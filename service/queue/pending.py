"""API-side bookkeeping of submitted jobs: one future per request id, resolved by the reply dispatcher.

This is where the caller's side of a job's deadline lives: when the deadline passes before the reply,
the future completes with an ``"expired"`` result and the job is abandoned (the backend tells workers to
skip it; they also skip any job whose ``Job.is_expired``). A future cancelled by its caller (the request
task cancelled on client disconnect) abandons the job in the same way: that is the one cancel API.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from facesr.service.queue.jobs import JobResult, expired_result

# Grace after the deadline before the API gives up on its own: lets a reply that is already on the wire win.
DEADLINE_GRACE_S = 0.02


class PendingReplies:
    """Futures by request id; must be used from the event loop thread only."""

    def __init__(self, on_abandon: Callable[[str], None]) -> None:
        self._futures: dict[str, asyncio.Future[JobResult]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._on_abandon = on_abandon

    def __len__(self) -> int:
        return len(self._futures)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._futures

    def add(self, request_id: str, deadline: float) -> asyncio.Future[JobResult]:
        """Register a future for ``request_id``; refuses a request id that is already waiting."""
        if request_id in self._futures:
            raise ValueError(f"request id {request_id!r} is already queued")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[JobResult] = loop.create_future()
        self._futures[request_id] = future
        if deadline != float("inf"):
            delay = max(0.0, deadline - time.time()) + DEADLINE_GRACE_S
            self._timers[request_id] = loop.call_later(delay, self._expire, request_id, deadline)
        future.add_done_callback(lambda f: self._on_done(request_id, f))
        return future

    def resolve(self, result: JobResult) -> bool:
        """Complete the waiting future; False when nobody waits (late, duplicate or foreign reply)."""
        future = self._futures.get(result.request_id)
        if future is None or future.done():
            return False
        future.set_result(result)
        return True

    def forget(self, request_id: str) -> None:
        """Drop a registration whose job never made it into the queue (no abandon notification)."""
        future = self._futures.pop(request_id, None)
        self._cancel_timer(request_id)
        if future is not None and not future.done():
            future.cancel()

    def fail_all(self, exc: BaseException) -> int:
        """Fail every waiting future with ``exc`` (backend lost or closing); returns how many."""
        waiting = [f for f in self._futures.values() if not f.done()]
        for future in waiting:
            future.set_exception(exc)
            # Mark retrieved: a caller that already went away must not produce "exception never retrieved".
            future.exception()
        return len(waiting)

    def _expire(self, request_id: str, deadline: float) -> None:
        self._timers.pop(request_id, None)
        future = self._futures.get(request_id)
        if future is not None and not future.done():
            future.set_result(expired_result(request_id, deadline, "before the job was answered"))
            self._on_abandon(request_id)

    def _on_done(self, request_id: str, future: asyncio.Future[JobResult]) -> None:
        registered = self._futures.get(request_id) is future
        if not registered:
            return  # forgotten: its timer is gone and nobody is to be told
        del self._futures[request_id]
        self._cancel_timer(request_id)
        if future.cancelled():
            self._on_abandon(request_id)

    def _cancel_timer(self, request_id: str) -> None:
        timer = self._timers.pop(request_id, None)
        if timer is not None:
            timer.cancel()


def resolved_future(result: JobResult) -> asyncio.Future[JobResult]:
    """A future that is already complete (answers decided without queueing, e.g. an expired deadline)."""
    future: asyncio.Future[JobResult] = asyncio.get_running_loop().create_future()
    future.set_result(result)
    return future

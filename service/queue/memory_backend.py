"""The embedded default: the same queue contract without Redis, worker on a thread of the API process.

The worker that runs here (built by the caller, see `InProcessQueue`) is the same code the Redis workers
run (batching, skipping cancelled/expired jobs, failure isolation, OOM splitting, metrics); only the
transport differs.
The model runs on its own thread (PyTorch releases the GIL inside its kernels), so the event loop stays
free to accept, validate and answer requests while a batch computes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from typing import Protocol

from facesr.service.queue.base import BackendStatus, BackendUnavailable, QueueFull
from facesr.service.queue.batching import FIRST_READ_BLOCK_S, collect_batch
from facesr.service.queue.events import SILENT, QueueEvents
from facesr.service.queue.jobs import Job, JobResult
from facesr.service.queue.pending import PendingReplies, resolved_future
from facesr.service.queue.settings import QueueSettings
from facesr.service.queue.source import Delivery, JobSource, WorkerInfo

log = logging.getLogger(__name__)


class MemoryJobSource:
    """A bounded, thread-safe job queue per model, consumed by one in-process worker.

    ``depth`` counts jobs waiting plus jobs being computed, the same quantity the Redis backend bounds.
    ``deliver`` is called (from the worker thread) with every result.
    """

    def __init__(self, max_queue: int, deliver: Callable[[JobResult], None]) -> None:
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self.max_queue = max_queue
        self._deliver = deliver
        self._cond = threading.Condition()
        self._queues: OrderedDict[str, deque[Job]] = OrderedDict()
        self._in_progress = 0
        self._live: set[str] = set()  # request ids queued or in progress
        self._cancelled: set[str] = set()
        self.last_heartbeat: WorkerInfo | None = None
        self.closed = False

    # -- producer side (event loop thread) -----------------------------------------------------------
    def put(self, job: Job, retry_after: Callable[[int], float]) -> None:
        """Admit ``job`` or raise QueueFull; the check and the append happen under one lock."""
        with self._cond:
            if self.closed:
                raise BackendUnavailable("the in-process worker has stopped")
            depth = self._depth()
            if depth >= self.max_queue:
                raise QueueFull(depth, self.max_queue, retry_after(depth))
            self._queues.setdefault(job.model, deque()).append(job)
            self._live.add(job.request_id)
            self._cond.notify()

    def cancel(self, request_id: str) -> None:
        with self._cond:
            if request_id in self._live:
                self._cancelled.add(request_id)

    def depth(self) -> int:
        with self._cond:
            return self._depth()

    def _depth(self) -> int:
        return self._in_progress + sum(len(q) for q in self._queues.values())

    # -- JobSource (worker thread) -------------------------------------------------------------------
    def open(self, worker_id: str, models: Sequence[str]) -> None:
        self.worker_id = worker_id

    def next_batch(self, max_items: int, max_wait_s: float, stop: threading.Event) -> list[Delivery]:
        first = self._take(None, max_items, FIRST_READ_BLOCK_S, stop)
        if not first:
            return []
        model = first[0].job.model if first[0].job else None
        return collect_batch(
            lambda count, timeout: self._take(model, count, timeout, stop), first, max_items, max_wait_s, stop
        )

    def _take(self, model: str | None, count: int, timeout_s: float, stop: threading.Event) -> list[Delivery]:
        """Up to ``count`` jobs of ``model`` (None: the model whose oldest job waited longest)."""
        give_up_at = time.monotonic() + timeout_s
        with self._cond:
            while True:
                queue = self._pick(model)
                if queue or stop.is_set():
                    break
                remaining = give_up_at - time.monotonic()
                if remaining <= 0:
                    return []
                self._cond.wait(min(remaining, 0.1))  # short waits: notice `stop` promptly
            if not queue:
                return []
            taken = [queue.popleft() for _ in range(min(count, len(queue)))]
            self._in_progress += len(taken)
        return [Delivery(handle=None, request_id=job.request_id, job=job) for job in taken]

    def _pick(self, model: str | None) -> deque[Job] | None:
        if model is not None:
            return self._queues.get(model) or None
        heads = [(q[0].enqueued_at, name) for name, q in self._queues.items() if q]
        return self._queues[min(heads)[1]] if heads else None

    def cancelled(self, deliveries: Sequence[Delivery]) -> set[str]:
        with self._cond:
            return {d.request_id for d in deliveries if d.request_id in self._cancelled}

    def finish(self, answered: Sequence[tuple[Delivery, JobResult]]) -> None:
        with self._cond:
            self._in_progress -= len(answered)
            for delivery, _ in answered:
                self._live.discard(delivery.request_id or "")
                self._cancelled.discard(delivery.request_id or "")
        for _, result in answered:
            self._deliver(result)

    def release(self, deliveries: Sequence[Delivery]) -> None:
        """Nothing to do: :meth:`finish` already counted them out, and nothing else can fail in between."""

    def maintain(self) -> None:
        """Nothing to reclaim: jobs cannot outlive their worker in one process."""

    def heartbeat(self, info: WorkerInfo, ttl_s: float) -> None:
        self.last_heartbeat = info

    def keep_alive(self, deliveries: Sequence[Delivery]) -> None:
        """Nothing to refresh in one process."""

    def withdraw(self) -> None:
        """Nothing to withdraw: readiness comes from the worker itself, and no other worker could help."""

    def close(self, info: WorkerInfo | None = None) -> None:
        with self._cond:
            self.closed = True
            if info is not None:
                self.last_heartbeat = info
            self._cond.notify_all()


class InProcessWorker(Protocol):
    """What the in-process queue needs from the worker it runs on a thread.

    :class:`facesr.service.worker.loop.Worker` is one; the queue never imports it (the caller builds it
    around the queue's :attr:`InProcessQueue.source`).
    """

    @property
    def throughput(self) -> float:
        """Faces per second of model time (0 before any batch)."""
        ...

    def run(self) -> None:
        """Serve from the source until stopped."""

    def stop(self) -> None:
        """Finish the batch in hand and make :meth:`run` return (thread-safe)."""

    def is_ready(self) -> bool:
        """True while warmed up and serving."""
        ...


class InProcessQueue:
    """:class:`~facesr.service.queue.base.QueueBackend` with the worker on a thread of this process.

    Args:
        settings: the queue's settings; only ``max_queue`` (jobs waiting or computing before QueueFull)
            applies in one process.
        make_worker: builds the worker that consumes :attr:`source` (called once, here).
        events: where late replies are reported (default: nowhere).
    """

    def __init__(
        self,
        settings: QueueSettings,
        make_worker: Callable[[JobSource], InProcessWorker],
        *,
        events: QueueEvents = SILENT,
    ) -> None:
        self.settings = settings
        self.max_queue = settings.max_queue
        self.events = events
        self.source = MemoryJobSource(settings.max_queue, self._deliver_threadsafe)
        self.worker = make_worker(self.source)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: PendingReplies | None = None
        self._thread: threading.Thread | None = None

    async def start(self) -> None:
        """Start the worker thread; it warms up in the background and reports ready when done."""
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._pending = PendingReplies(on_abandon=self.source.cancel)
        self._thread = threading.Thread(target=self._run_worker, name="facesr-inprocess-worker", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        """Let the worker finish its batch and stop; fail anything still waiting."""
        if self._thread is None:
            return
        self.worker.stop()
        await asyncio.to_thread(self._thread.join, 60.0)
        if self._pending is not None:
            self._pending.fail_all(BackendUnavailable("the in-process worker has stopped"))
        self._thread = None

    async def submit(self, job: Job) -> asyncio.Future[JobResult]:
        pending = self._require_running()
        if job.is_expired():
            return resolved_future(job.expired_result("before queueing"))
        future = pending.add(job.request_id, job.deadline)
        try:
            self.source.put(job, self._retry_after)
        except BaseException:
            pending.forget(job.request_id)
            raise
        return future

    async def status(self) -> BackendStatus:
        alive = self._thread is not None and self._thread.is_alive()
        ready = alive and self.worker.is_ready()
        info = self.source.last_heartbeat
        models = {}
        if ready and info is not None:
            models = {
                name: {**card, "workers": 1, "runners": info.runners} for name, card in info.models.items()
            }
        depth = self.source.depth()
        detail = "in-process worker " + ("ready" if ready else "warming up" if alive else "stopped")
        return BackendStatus(alive, int(ready), models, depth, detail)

    # -- internals -----------------------------------------------------------------------------------
    def _require_running(self) -> PendingReplies:
        if self._pending is None or self._thread is None or not self._thread.is_alive():
            raise BackendUnavailable("the in-process worker is not running")
        return self._pending

    def _run_worker(self) -> None:
        try:
            self.worker.run()
        except Exception:
            log.exception("the in-process worker crashed")
        finally:
            self.source.close(None)
            loop, pending = self._loop, self._pending
            if loop is not None and pending is not None and not loop.is_closed():
                error = BackendUnavailable("the in-process worker has stopped")
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                    loop.call_soon_threadsafe(pending.fail_all, error)

    def _deliver_threadsafe(self, result: JobResult) -> None:
        loop, pending = self._loop, self._pending
        if loop is None or pending is None:
            return
        try:
            loop.call_soon_threadsafe(self._resolve, pending, result)
        except RuntimeError:
            log.debug("event loop closed; dropping the result of %s", result.request_id)

    def _resolve(self, pending: PendingReplies, result: JobResult) -> None:
        """On the event loop: hand the result to its caller, or count it late (its caller stopped waiting)."""
        if not pending.resolve(result):
            self.events.late_reply()

    def _retry_after(self, depth: int) -> float:
        throughput = self.worker.throughput
        return 1.0 if throughput <= 0 else min(60.0, max(0.5, depth / throughput))

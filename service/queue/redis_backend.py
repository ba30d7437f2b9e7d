"""The API's side of the Redis queue: atomic admission, one reply dispatcher per process, status.

Per API process: one command connection pool, plus one dedicated connection that blocks on this process's
reply list (``BLPOP`` for at most 1 s, then ``LPOP`` with a count to drain bursts) and resolves waiting
futures by request id. That single dispatcher replaces one blocked connection per request.

Admission is one Lua script: it compares the stream's length (jobs waiting plus in progress, because workers
delete what they acknowledge) with ``max_queue`` and only then adds the job, so concurrent API processes
cannot overshoot the bound. A full queue raises :class:`QueueFull` with a retry-after estimated from the
workers' advertised throughput.

When Redis goes away, ``submit`` fails fast with :class:`BackendUnavailable` (one quick retry after a
dropped connection, none after a timeout) and futures still waiting are failed with it too, since their
replies may be lost; the dispatcher reconnects with backoff and the next ``submit`` after Redis is back
simply works. A Redis that stops answering (frozen, not down) costs one command timeout: after that the
process remembers it as unreachable, so ``submit`` and ``status`` answer at once, and one caller at a time
probes it with a short PING every ``UNREACHABLE_RECHECK_S``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from typing import Any

import redis
import redis.asyncio as aredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from facesr.service.queue import wire
from facesr.service.queue.backoff import Backoff
from facesr.service.queue.base import BackendStatus, BackendUnavailable, QueueFull
from facesr.service.queue.codec import CodecError, decode_heartbeat, decode_result, encode_job
from facesr.service.queue.events import SILENT, QueueEvents
from facesr.service.queue.jobs import Job, JobResult
from facesr.service.queue.keys import GROUP, Keys, check_name
from facesr.service.queue.pending import PendingReplies, resolved_future
from facesr.service.queue.settings import QueueSettings, redacted_url, socket_options
from facesr.service.queue.source import WorkerInfo

log = logging.getLogger(__name__)

__all__ = ["RedisQueue"]

# KEYS[1] = job stream; ARGV[1] = max depth, ARGV[2] = consumer group, ARGV[3..] = field, value, ...
# Returns {1, entry id} when admitted, {0, depth} when full.
_ADMIT = """
local depth = redis.call('XLEN', KEYS[1])
if depth >= tonumber(ARGV[1]) then
  return {0, depth}
end
if depth == 0 and redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[2], '0', 'MKSTREAM')
end
return {1, redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3))}
"""

REPLY_BLOCK_S = 1  # BLPOP timeout; well under the dispatcher connection's socket timeout
UNREACHABLE_RECHECK_S = 1.0  # after a connection failure or timeout, ask Redis again only this much later
PROBE_TIMEOUT_S = 0.5  # the PING that decides whether Redis is back
REPLY_DRAIN = 256  # replies taken per LPOP after a BLPOP wakes up
MAX_REQUEST_ID = 200
MAX_MODELS_TRACKED = 256


class RedisQueue:
    """:class:`~facesr.service.queue.base.QueueBackend` on Redis Streams, for the API process.

    Args:
        settings: the queue's settings (url, prefix, max_queue per model stream, reply_ttl_s for this
            process's reply list, job_ttl_s for cancel marks).
        events: where late replies are reported (default: nowhere).
        api_id: this process's reply address (default: random, unique per process).
        connect_timeout_s / command_timeout_s: how long a dead Redis may stall a request.
    """

    def __init__(
        self,
        settings: QueueSettings,
        *,
        events: QueueEvents = SILENT,
        api_id: str | None = None,
        connect_timeout_s: float = 1.0,
        command_timeout_s: float = 2.0,
    ) -> None:
        if not settings.url:
            raise ValueError("the Redis queue needs a Redis URL")
        self.settings = settings
        self.url = settings.url
        self.keys = Keys(settings.prefix)
        self.max_queue = settings.max_queue
        self.reply_ttl_s = settings.reply_ttl_s
        self.job_ttl_s = settings.job_ttl_s
        self.events = events
        self.api_id = check_name("api id", api_id or f"api-{secrets.token_hex(6)}")
        self.connect_timeout_s = connect_timeout_s
        self.command_timeout_s = command_timeout_s
        self.late_replies = 0
        self._client: aredis.Redis | None = None
        self._listener: aredis.Redis | None = None
        self._admit: Any = None
        self._pending: PendingReplies | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._cancel_tasks: set[asyncio.Task[None]] = set()
        self._models_seen: set[str] = set()
        self._closing = False
        self._throughput = (0.0, 0.0)  # (faces/s of ready workers, when measured)
        self._outage: str | None = None  # why Redis is known unreachable; None while it answers
        self._recheck_at = 0.0  # monotonic time of the next probe during an outage
        self._probing = False

    # -- lifecycle -----------------------------------------------------------------------------------
    async def start(self) -> None:
        """Create the clients and the reply dispatcher; must run inside the serving event loop."""
        if self._dispatcher is not None:
            return
        self._closing = False
        common: dict[str, Any] = {
            "socket_connect_timeout": self.connect_timeout_s,
            **socket_options(self.url),
            "health_check_interval": 10,
            # A dropped connection is worth one quick retry; a timeout is not (it would only double the wait).
            "retry": Retry(
                ExponentialBackoff(cap=0.05, base=0.01), 1, supported_errors=(redis.ConnectionError,)
            ),
        }
        self._client = aredis.Redis.from_url(self.url, socket_timeout=self.command_timeout_s, **common)
        self._listener = aredis.Redis.from_url(
            self.url, socket_timeout=REPLY_BLOCK_S + 4.0, max_connections=1, **common
        )
        self._admit = self._client.register_script(_ADMIT)
        self._pending = PendingReplies(on_abandon=self._abandon)
        self._dispatcher = asyncio.create_task(self._dispatch_replies(), name=f"facesr-replies-{self.api_id}")

    async def close(self) -> None:
        """Stop the dispatcher, fail waiting futures, close the clients."""
        if self._dispatcher is not None:
            # The flag ends the loop even if the cancellation is swallowed inside redis-py's read timeout
            # handling (seen when the cancel races a blocking read's completion); BLPOP returns within 1 s.
            self._closing = True
            self._dispatcher.cancel()
            await asyncio.wait({self._dispatcher}, timeout=REPLY_BLOCK_S + 2.0)
            self._dispatcher = None
        if self._cancel_tasks:
            await asyncio.wait(list(self._cancel_tasks), timeout=1.0)
        if self._pending is not None:
            self._pending.fail_all(BackendUnavailable("the queue client is shutting down"))
        for client in (self._client, self._listener):
            if client is not None:
                await client.aclose()
        self._client = self._listener = None

    # -- the contract --------------------------------------------------------------------------------
    async def submit(self, job: Job) -> asyncio.Future[JobResult]:
        pending, client = self._require_started()
        if not job.request_id or len(job.request_id) > MAX_REQUEST_ID:
            raise ValueError(f"request id must be 1-{MAX_REQUEST_ID} characters")
        stream = self.keys.jobs(job.model)
        if job.is_expired():
            return resolved_future(job.expired_result("before queueing"))
        fields = encode_job(job, self.api_id)
        await self._ensure_reachable(client)
        future = pending.add(job.request_id, job.deadline)  # before XADD: a fast reply must find it
        args: list[Any] = [self.max_queue, GROUP]
        for name, value in fields.items():
            args += [name, value]
        try:
            admitted, value = await self._admit(keys=[stream], args=args, client=client)
        except redis.RedisError as exc:
            pending.forget(job.request_id)
            self._note_failure(exc)
            raise BackendUnavailable(f"cannot queue the job ({type(exc).__name__})") from exc
        except BaseException:
            pending.forget(job.request_id)
            raise
        if len(self._models_seen) < MAX_MODELS_TRACKED:  # counted in status() even before a worker serves it
            self._models_seen.add(job.model)
        if not admitted:
            pending.forget(job.request_id)
            depth = int(value)
            raise QueueFull(depth, self.max_queue, await self._retry_after(depth))
        return future

    async def status(self) -> BackendStatus:
        _, client = self._require_started()
        try:
            await self._ensure_reachable(client)
        except BackendUnavailable as exc:
            return BackendStatus(False, 0, {}, 0, str(exc))
        try:
            workers = await self._workers(client)
            ready = [w for w in workers if w.ready]
            models: dict[str, dict] = {}
            for worker in ready:
                for name, card in worker.models.items():
                    entry = models.setdefault(name, {**card, "workers": 0, "runners": 0})
                    entry["workers"] += 1
                    entry["runners"] += worker.runners
            streams = sorted({*models, *self._models_seen})
            depth = 0
            if streams:
                pipe = client.pipeline(transaction=False)
                for name in streams:
                    pipe.xlen(self.keys.jobs(name))
                depth = sum(int(n) for n in await pipe.execute())
        except redis.RedisError as exc:
            self._note_failure(exc)
            return BackendStatus(False, 0, {}, 0, f"the queue is unreachable ({type(exc).__name__})")
        self._throughput = (sum(w.throughput for w in ready), time.monotonic())
        warming = len(workers) - len(ready)
        detail = f"{len(ready)} worker(s) ready" + (f", {warming} warming up" if warming else "")
        return BackendStatus(True, len(ready), models, depth, detail)

    # -- internals -----------------------------------------------------------------------------------
    def _require_started(self) -> tuple[PendingReplies, aredis.Redis]:
        if self._pending is None or self._client is None:
            raise BackendUnavailable("the queue client is not started (call start() in the event loop)")
        return self._pending, self._client

    async def _ensure_reachable(self, client: aredis.Redis) -> None:
        """Return at once while Redis answers; during a known outage raise :class:`BackendUnavailable`
        without waiting, except for one caller per ``UNREACHABLE_RECHECK_S``, which probes it."""
        if self._outage is None:
            return
        if self._probing or time.monotonic() < self._recheck_at:
            raise BackendUnavailable(f"the queue is unreachable (checking again shortly): {self._outage}")
        self._probing = True
        try:
            await asyncio.wait_for(client.ping(), PROBE_TIMEOUT_S)
        except (redis.RedisError, TimeoutError) as exc:
            self._note_failure(exc)
            raise BackendUnavailable(f"the queue is unreachable: {self._outage}") from exc
        finally:
            self._probing = False
        log.info("redis at %s answers again", redacted_url(self.url))
        self._outage = None

    def _note_failure(self, exc: BaseException) -> None:
        """Remember a Redis that did not answer; errors Redis itself replied with do not count."""
        if isinstance(exc, (redis.ConnectionError, redis.TimeoutError, TimeoutError)):
            if self._outage is None:
                log.warning(
                    "redis unreachable, answering 'unavailable' without waiting: %s", self._describe(exc)
                )
            self._outage = type(exc).__name__  # client-facing: no address, no message text
            self._recheck_at = time.monotonic() + UNREACHABLE_RECHECK_S

    def _describe(self, exc: BaseException) -> str:
        """For logs only: where and what (the URL without credentials)."""
        return f"redis at {redacted_url(self.url)}: {type(exc).__name__}: {exc}"

    async def _workers(self, client: aredis.Redis) -> list[WorkerInfo]:
        """Heartbeats of workers whose heartbeat has not expired; malformed ones are ignored and counted."""
        now = time.time()
        pipe = client.pipeline(transaction=False)
        pipe.zremrangebyscore(self.keys.workers, "-inf", now)
        pipe.zrangebyscore(self.keys.workers, now, "+inf")
        _, ids = await pipe.execute()
        if not ids:
            return []
        names = []
        for worker_id in ids:
            try:
                names.append(self.keys.heartbeat(wire.name(worker_id, "worker id")))
            except (CodecError, ValueError):
                self._malformed("heartbeat", "a worker id that is not a valid key name")
        payloads = await client.mget(names) if names else []
        workers = []
        for payload in payloads:
            if payload is None:
                continue
            try:
                workers.append(decode_heartbeat(payload))
            except CodecError as error:
                self._malformed("heartbeat", str(error))
        return workers

    def _malformed(self, kind: str, reason: str) -> None:
        """Set a value read from Redis aside: counted, logged (at most a line of it), never raised."""
        self.events.malformed(kind)
        log.warning("ignoring a malformed %s read from redis: %.200s", kind, reason)

    async def _retry_after(self, depth: int) -> float:
        """Seconds for the ready workers to work through ``depth`` jobs: 1 s when unknown, else 0.5-60 s."""
        throughput, measured = self._throughput
        if time.monotonic() - measured > 2.0:
            await self.status()
            throughput, _ = self._throughput
        if throughput <= 0:
            return 1.0
        return min(60.0, max(0.5, depth / throughput))

    def _abandon(self, request_id: str) -> None:
        """The caller stopped waiting (deadline or cancellation): tell workers to skip the job."""
        task = asyncio.get_running_loop().create_task(self._send_cancel(request_id))
        self._cancel_tasks.add(task)
        task.add_done_callback(self._cancel_tasks.discard)

    async def _send_cancel(self, request_id: str) -> None:
        if self._client is None:
            return
        try:
            ttl = max(1, math.ceil(self.job_ttl_s))
            await self._client.set(self.keys.cancel(request_id), b"1", ex=ttl)
        except redis.RedisError as exc:
            log.warning("could not mark %s cancelled: %s", request_id, self._describe(exc))

    async def _dispatch_replies(self) -> None:
        """The one reader of this process's reply list; resolves futures until cancelled."""
        assert self._listener is not None and self._pending is not None
        key = self.keys.reply(self.api_id)
        backoff = Backoff()
        while not self._closing:
            try:
                popped = await self._listener.blpop([key], timeout=REPLY_BLOCK_S)
                if popped is None:
                    continue
                self._deliver(popped[1])  # before draining: the first reply does not wait a round trip
                for frame in await self._listener.lpop(key, REPLY_DRAIN) or []:
                    self._deliver(frame)
                backoff.reset()
            except Exception as exc:
                # Anything, not only RedisError: if this task ended, every later request would wait for
                # its deadline while /readyz stays green. A read that timed out (Redis frozen, not gone)
                # loses nothing: the replies wait in the list, so the callers keep waiting, within their
                # deadlines, for Redis to thaw. A lost connection may have lost replies popped in flight,
                # so then the waiting callers are released with a 503 rather than left to time out.
                failed = 0
                if not isinstance(exc, redis.TimeoutError | TimeoutError):
                    failed = self._pending.fail_all(BackendUnavailable("lost the connection to the queue"))
                delay = backoff.next()
                log.warning(
                    "reply listener: %s; failed %d waiting job(s); retrying in %.2f s",
                    self._describe(exc),
                    failed,
                    delay,
                    exc_info=not isinstance(exc, redis.RedisError),
                )
                await asyncio.sleep(delay)

    def _deliver(self, frame: object) -> None:
        assert self._pending is not None
        try:
            result = decode_result(frame)
        except CodecError as exc:
            self._malformed("reply", str(exc))
            return
        if not self._pending.resolve(result):
            self.late_replies += 1
            self.events.late_reply()

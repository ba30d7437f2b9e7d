"""The worker's side of the Redis queue: consumer-group reads, replies, acknowledgements, reclaiming.

Delivery guarantees: a job stays in its stream's pending list from XREADGROUP until the worker has pushed
the reply and sent XACK + XDEL in one pipeline, so a worker that dies mid-batch loses nothing: as soon as
its heartbeat key has expired, any live worker takes its entries over (XCLAIM with a short minimum idle
time, which also settles races between several live workers); failing that, after ``claim_idle_ms``
without activity on an entry, with XAUTOCLAIM. Live workers refresh the idle time of the entries they hold
from their heartbeat thread (XCLAIM ... JUSTID, which does not count as a delivery), so a slow batch is
never taken over while its worker is alive. An entry delivered more than ``max_deliveries`` times (it keeps
killing workers) goes to the dead-letter stream and its caller gets a ``dead_letter`` error instead of
waiting until its deadline. A worker leaving on SIGTERM hands back the entries it had not started with
their delivery count lowered by one, so rolling restarts never push a healthy job towards the dead letters.

Every Redis failure surfaces as :class:`BackendUnavailable`; the worker loop backs off and retries. After
a reconnect the consumer first re-reads the entries it already owns (XREADGROUP ... 0), and recreates
its consumer groups if Redis came back empty.

A worker's runners share one source: batches are formed one at a time (a lock), and the entries handed
out and not yet finished are remembered, so re-reading the consumer's own entries after a reconnect
never hands a batch that another runner is computing to a second runner.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from facesr.service.queue.base import BackendUnavailable
from facesr.service.queue.batching import FIRST_READ_BLOCK_S, collect_batch
from facesr.service.queue.codec import CodecError, decode_job, encode_heartbeat, encode_result, peek_routing
from facesr.service.queue.events import SILENT, QueueEvents
from facesr.service.queue.jobs import JobResult
from facesr.service.queue.keys import GROUP, Keys
from facesr.service.queue.settings import QueueSettings, redacted_url, socket_options
from facesr.service.queue.source import Delivery, WorkerInfo

log = logging.getLogger(__name__)

Handle = tuple[str, str]  # (stream key, entry id)
TOP_UP_POLL_S = 0.0005  # pause between non-blocking reads while a batch is being collected
RELEASED_IDLE_MS = 24 * 3600 * 1000  # idle time given to entries handed back on exit
# Entries of a consumer whose heartbeat has expired are taken over once idle this long. Not 0: the first
# worker to claim one resets its idle time, so the others racing for it in the same instant get nothing.
ORPHAN_MIN_IDLE_MS = 1_000

# KEYS[1] = job stream; ARGV[1] = group, ARGV[2] = leaving consumer, ARGV[3] = idle ms, ARGV[4..] = entry ids.
# Makes each entry the consumer still owns claimable at once and takes back the delivery it was counted
# for (RETRYCOUNT), all in one atomic step: a graceful hand-back is not a failed delivery. Returns how many.
_HAND_BACK = """
local handed = 0
for i = 4, #ARGV do
  local row = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2])[1]
  if row then
    local count = math.max(0, tonumber(row[4]) - 1)
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i],
               'IDLE', ARGV[3], 'RETRYCOUNT', count, 'JUSTID')
    handed = handed + 1
  end
end
return handed
"""


def _text(value: object) -> str:
    """A Redis reply value as text (replies are bytes; a client with decode_responses gives str)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _ids_by_stream(handles: Iterable[Handle]) -> dict[str, list[str]]:
    by_stream: dict[str, list[str]] = {}
    for stream, entry_id in handles:
        by_stream.setdefault(stream, []).append(entry_id)
    return by_stream


def _encode_or_fail(result: JobResult) -> bytes:
    """The reply frame of ``result``; a result that cannot be encoded is answered as an internal error
    instead, so one bad result neither goes unanswered nor stops the worker."""
    try:
        return encode_result(result)
    except ValueError as exc:
        log.error("cannot encode the result of %s: %s", result.request_id, exc)
        failure = JobResult.failure(
            result.request_id, "internal", f"the worker could not send the result: {exc}"
        )
        return encode_result(failure)


class RedisJobSource:
    """Consumes ``{prefix}:jobs:{model}`` streams as one member of the ``workers`` consumer group.

    Args:
        settings: the queue's settings: url, prefix (shared with the API processes), max_deliveries
            (after which a job is dead-lettered), claim_idle_ms (idle time after which another worker's
            entry is taken over), reply_ttl_s (refreshed on a reply list whenever a reply is pushed),
            max_batch_size (also bounds how many entries one reclaim pass takes over).
        events: where redeliveries and dead letters are reported (default: nowhere).
        dead_letter_maxlen: approximate cap of the dead-letter stream.
        consumer_gc_s: consumers idle this long with nothing pending are removed from the group.
    """

    def __init__(
        self,
        settings: QueueSettings,
        *,
        events: QueueEvents = SILENT,
        dead_letter_maxlen: int = 10_000,
        consumer_gc_s: float = 600.0,
    ) -> None:
        if not settings.url:
            raise ValueError("the Redis job source needs a Redis URL")
        self.settings = settings
        self.events = events
        self.url = settings.url
        self.keys = Keys(settings.prefix)
        self.max_deliveries = settings.max_deliveries
        self.claim_idle_ms = settings.claim_idle_ms
        self.reply_ttl_s = settings.reply_ttl_s
        self.max_batch_size = settings.max_batch_size
        self.dead_letter_maxlen = dead_letter_maxlen
        self.consumer_gc_s = consumer_gc_s
        self.consumer = ""
        self._client: redis.Redis | None = None
        self._streams: list[str] = []
        self._backlog: deque[Delivery] = deque()
        self._backlog_lock = threading.Lock()
        self._read_lock = threading.Lock()  # one batch is formed at a time
        self._handed_out: set[Handle] = set()  # delivered to a runner, not finished yet (_backlog_lock)
        self._reread_own = True
        self._groups_ready = False
        self._next_consumer_gc = 0.0

    # -- lifecycle -----------------------------------------------------------------------------------
    def open(self, worker_id: str, models: Sequence[str]) -> None:
        """Remember who we are and what to read; connects lazily, so a Redis that is down is not fatal."""
        self.consumer = worker_id
        self._streams = [self.keys.jobs(model) for model in models]
        # Blocking reads wait at most FIRST_READ_BLOCK_S, well under the socket timeout.
        self._client = redis.Redis.from_url(
            self.url,
            socket_timeout=FIRST_READ_BLOCK_S + 4.0,
            socket_connect_timeout=2.0,
            **socket_options(self.url),
            health_check_interval=10,
            retry=Retry(NoBackoff(), 0),  # the worker loop owns retrying, with backoff
        )

    def close(self, info: WorkerInfo | None = None) -> None:
        """Withdraw the heartbeat, hand back unstarted entries, leave the group if nothing is pending."""
        if self._client is None:
            return
        with self._backlog_lock:
            unstarted, self._backlog = list(self._backlog), deque()
        try:
            with self._errors():
                # Before the heartbeat goes: once it has, other workers may take these over themselves.
                hand_back = self._client.register_script(_HAND_BACK)
                for stream, ids in _ids_by_stream(d.handle for d in unstarted).items():
                    hand_back(keys=[stream], args=[GROUP, self.consumer, RELEASED_IDLE_MS, *ids])
                pipe = self._client.pipeline(transaction=False)
                pipe.delete(self.keys.heartbeat(self.consumer))
                pipe.zrem(self.keys.workers, self.consumer)
                pipe.execute()
                for stream in self._streams:
                    mine = self._client.xpending_range(stream, GROUP, "-", "+", 1, consumername=self.consumer)
                    if not mine:
                        self._client.xgroup_delconsumer(stream, GROUP, self.consumer)
        except BackendUnavailable as exc:
            log.debug("close: %s", exc)
        finally:
            self._client.close()
            self._client = None

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            raise RuntimeError("RedisJobSource.open() was not called")
        return self._client

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Map every Redis failure to BackendUnavailable and remember to re-sync after reconnecting."""
        try:
            yield
        except redis.RedisError as exc:
            self._reread_own = True
            self._groups_ready = False
            raise BackendUnavailable(f"redis at {self._safe_url()}: {type(exc).__name__}: {exc}") from exc

    def _safe_url(self) -> str:
        return redacted_url(self.url)  # never log a password

    def _ensure_groups(self) -> None:
        for stream in self._streams:
            try:
                # id 0: entries added before the group existed (e.g. right after a Redis restart) are served.
                self.client.xgroup_create(stream, GROUP, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self._groups_ready = True

    # -- reading -------------------------------------------------------------------------------------
    def next_batch(self, max_items: int, max_wait_s: float, stop: threading.Event) -> list[Delivery]:
        with self._read_lock:
            batch = self._next_batch(max_items, max_wait_s, stop)
            with self._backlog_lock:  # before the next read: a re-read must see them as handed out
                self._handed_out.update(d.handle for d in batch)
        return batch

    def _next_batch(self, max_items: int, max_wait_s: float, stop: threading.Event) -> list[Delivery]:
        with self._errors():
            if not self._groups_ready:
                self._ensure_groups()
            if self._reread_own:
                self._adopt(self._read({s: "0" for s in self._streams}, None, None))
                self._reread_own = False
            backlog = self._take_backlog(max_items)
            if backlog:
                return backlog
            first = self._read({s: ">" for s in self._streams}, max_items, FIRST_READ_BLOCK_S)
            if not first:
                return []
            stream = first[0].handle[0]
            chosen = [d for d in first if d.handle[0] == stream]
            self._adopt([d for d in first if d.handle[0] != stream])
            return collect_batch(partial(self._top_up, stream), chosen, max_items, max_wait_s, stop)

    def _top_up(self, stream: str, count: int, timeout_s: float) -> list[Delivery]:
        """More entries of ``stream`` for the batch being collected, waiting at most ``timeout_s``.

        Polls instead of blocking: Redis checks blocked reads' timeouts only on its cron tick (every
        100 ms at the default ``hz 10``), so ``XREADGROUP ... BLOCK 2`` can return after 100 ms and would
        stretch a 2 ms batching window fifty-fold.
        """
        deliveries = self._read({stream: ">"}, count, None)
        if not deliveries:
            time.sleep(min(timeout_s, TOP_UP_POLL_S))
        return deliveries

    def _read(self, streams: dict[Any, Any], count: int | None, timeout_s: float | None) -> list[Delivery]:
        """XREADGROUP; ``timeout_s`` None = do not block. Block is never 0 ms (which means forever)."""
        block = None if timeout_s is None else max(1, int(timeout_s * 1000))
        try:
            response = self.client.xreadgroup(GROUP, self.consumer, streams, count=count, block=block)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            log.warning("consumer group missing (Redis restarted?); recreating it")
            self._ensure_groups()
            return []
        if not response:
            return []
        pairs: Any = response.items() if isinstance(response, dict) else response
        deliveries = []
        empty: list[Handle] = []
        for stream_key, entries in pairs:
            stream = _text(stream_key)
            for entry in entries:
                entry_id, fields = _text(entry[0]), entry[1]
                if not fields:  # deleted while pending: nothing to answer
                    empty.append((stream, entry_id))
                    continue
                deliveries.append(self._delivery(stream, entry_id, fields, attempt=1))
        if empty:
            self._ack(empty)
        return deliveries

    def _delivery(self, stream: str, entry_id: str, fields: dict[Any, Any], attempt: int) -> Delivery:
        try:
            job, reply_to = decode_job(fields)
        except CodecError as exc:
            rid, routed_to = peek_routing(fields)
            return Delivery((stream, entry_id), rid, None, routed_to, attempt, error=str(exc))
        return Delivery((stream, entry_id), job.request_id, job, reply_to, attempt)

    def _adopt(self, deliveries: Sequence[Delivery]) -> None:
        """Keep entries for later batches; an entry already held (re-read after a claim) or being computed
        by a runner (re-read after a reconnect) is not doubled."""
        with self._backlog_lock:
            held = {d.handle for d in self._backlog} | self._handed_out
            self._backlog.extend(d for d in deliveries if d.handle not in held)

    def _take_backlog(self, max_items: int) -> list[Delivery]:
        """Up to ``max_items`` backlog entries of the stream at the backlog's head."""
        with self._backlog_lock:
            if not self._backlog:
                return []
            stream = self._backlog[0].handle[0]
            taken: list[Delivery] = []
            kept: deque[Delivery] = deque()
            for delivery in self._backlog:
                if delivery.handle[0] == stream and len(taken) < max_items:
                    taken.append(delivery)
                else:
                    kept.append(delivery)
            self._backlog = kept
            return taken

    def cancelled(self, deliveries: Sequence[Delivery]) -> set[str]:
        rids = [d.request_id for d in deliveries if d.request_id]
        if not rids:
            return set()
        with self._errors():
            flags = self.client.mget([self.keys.cancel(rid) for rid in rids])
        return {rid for rid, flag in zip(rids, flags, strict=True) if flag is not None}

    # -- answering -----------------------------------------------------------------------------------
    def finish(self, answered: Sequence[tuple[Delivery, JobResult]]) -> None:
        """Push replies (refreshing each list's TTL), then XACK + XDEL, in one round trip."""
        if not answered:
            return
        try:
            self._reply_and_ack(answered)
        finally:
            self.release([d for d, _ in answered])

    def release(self, deliveries: Sequence[Delivery]) -> None:
        """No runner holds these any longer: a re-read after a failure may hand them out again."""
        with self._backlog_lock:
            self._handed_out.difference_update(d.handle for d in deliveries)

    def _reply_and_ack(self, answered: Sequence[tuple[Delivery, JobResult]]) -> None:
        ttl = max(1, int(self.reply_ttl_s))
        with self._errors():
            pipe = self.client.pipeline(transaction=False)
            for delivery, result in answered:
                if delivery.job is None:
                    self._queue_dead_letter_malformed(pipe, delivery)
                if delivery.reply_to and delivery.request_id:
                    reply_key = self.keys.reply(delivery.reply_to)
                    pipe.rpush(reply_key, _encode_or_fail(result))
                    pipe.expire(reply_key, ttl)
                else:
                    log.warning("entry %s has no reply address; acknowledged unanswered", delivery.handle)
            self._queue_ack(pipe, [d.handle for d, _ in answered])
            pipe.execute()

    def _queue_dead_letter_malformed(self, pipe: Any, delivery: Delivery) -> None:
        """A stream entry that could not be decoded goes to the dead-letter stream with the reason, on first
        sight (it would fail the same way on every delivery); its caller, when known, is answered."""
        stream, entry_id = delivery.handle
        record = {
            "stream": stream,
            "entry_id": entry_id,
            "reason": (delivery.error or "malformed entry")[:500],
            "rid": delivery.request_id or "",
            "at": time.time(),
        }
        pipe.xadd(self.keys.dead, record, maxlen=self.dead_letter_maxlen, approximate=True)
        self.events.malformed("job")
        log.error("dead-lettered malformed entry %s on %s: %s", entry_id, stream, record["reason"])

    def _ack(self, handles: Sequence[Handle]) -> None:
        pipe = self.client.pipeline(transaction=False)
        self._queue_ack(pipe, handles)
        pipe.execute()

    @staticmethod
    def _queue_ack(pipe: Any, handles: Sequence[Handle]) -> None:
        for stream, ids in _ids_by_stream(handles).items():
            pipe.xack(stream, GROUP, *ids)
            pipe.xdel(stream, *ids)  # XLEN stays "waiting + in progress", the admission bound

    # -- taking over from dead workers ------------------------------------------------------------------
    def maintain(self) -> None:
        with self._errors():
            if not self._groups_ready:
                self._ensure_groups()
            for stream in self._streams:
                self._reclaim(stream)
            if time.monotonic() >= self._next_consumer_gc:
                self._forget_departed_consumers()
                self._next_consumer_gc = time.monotonic() + min(60.0, self.consumer_gc_s)

    def _reclaim(self, stream: str) -> None:
        """Take over entries of departed consumers first, then any entry idle for ``claim_idle_ms``."""
        try:
            orphans = self._claim_orphans(stream)
            response = self.client.xautoclaim(
                stream, GROUP, self.consumer, self.claim_idle_ms, start_id="0-0", count=self.max_batch_size
            )
        except redis.ResponseError as exc:
            if "NOGROUP" in str(exc):
                self._ensure_groups()
                return
            raise
        entries = [*orphans, *response[1]]
        claimed = [(_text(eid), fields) for eid, fields in entries if fields]
        gone = [(stream, _text(eid)) for eid, fields in entries if not fields]
        gone += [(stream, _text(eid)) for eid in (response[2] if len(response) > 2 else [])]
        if gone:
            self._ack(gone)
        if not claimed:
            return
        attempts = self._delivery_counts(stream, [eid for eid, _ in claimed])
        exhausted: list[tuple[Delivery, dict[Any, Any]]] = []
        retried: list[tuple[Delivery, dict[Any, Any]]] = []
        for entry_id, fields in claimed:
            delivery = self._delivery(stream, entry_id, fields, attempt=attempts.get(entry_id, 2))
            (exhausted if delivery.attempt > self.max_deliveries else retried).append((delivery, fields))
        if exhausted:
            self._dead_letter(exhausted)
        if retried:
            # Attempt 1 after a claim: handed back unstarted by a worker that left (not a redelivery).
            redelivered = len([delivery for delivery, _ in retried if delivery.attempt > 1])
            if redelivered:
                self.events.redelivered(redelivered)
                log.warning("took over %d job(s) from unresponsive workers on %s", redelivered, stream)
            if redelivered < len(retried):
                log.info(
                    "took %d job(s) handed back by a departing worker on %s",
                    len(retried) - redelivered,
                    stream,
                )
            self._adopt([d for d, _ in retried])

    def _claim_orphans(self, stream: str) -> list[Any]:
        """XCLAIM entries owned by consumers whose heartbeat key is gone, without waiting ``claim_idle_ms``.

        Counts as a delivery (the owner died holding them). Each consumer is checked in one round trip
        (EXISTS); at most ``max_batch_size`` entries are taken per pass, like XAUTOCLAIM.
        """
        summary = self.client.xpending(stream, GROUP)
        owners = [
            _text(row["name"])
            for row in summary.get("consumers") or []
            if _text(row["name"]) != self.consumer and int(row["pending"]) > 0
        ]
        if not owners:
            return []
        pipe = self.client.pipeline(transaction=False)
        for owner in owners:
            pipe.exists(self.keys.heartbeat(owner))
        departed = [owner for owner, alive in zip(owners, pipe.execute(), strict=True) if not alive]
        claimed: list[Any] = []
        for owner in departed:
            room = self.max_batch_size - len(claimed)
            if room <= 0:
                break
            rows = self.client.xpending_range(
                stream, GROUP, "-", "+", room, consumername=owner, idle=ORPHAN_MIN_IDLE_MS
            )
            if not rows:
                continue
            ids: list[Any] = [_text(row["message_id"]) for row in rows]
            claimed += self.client.xclaim(stream, GROUP, self.consumer, ORPHAN_MIN_IDLE_MS, ids)
            log.warning("worker %s has no heartbeat; taking over its %d pending job(s)", owner, len(ids))
        return claimed

    def _delivery_counts(self, stream: str, entry_ids: list[str]) -> dict[str, int]:
        ordered = sorted(entry_ids, key=lambda e: tuple(int(p) for p in e.split("-")))
        rows = self.client.xpending_range(
            stream, GROUP, ordered[0], ordered[-1], len(ordered) + 64, consumername=self.consumer
        )
        return {_text(row["message_id"]): int(row["times_delivered"]) for row in rows}

    def _dead_letter(self, exhausted: Sequence[tuple[Delivery, dict[Any, Any]]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        answered = []
        for delivery, fields in exhausted:
            stream, entry_id = delivery.handle
            record = {k: v for k, v in fields.items() if _text(k) != "lr"}
            record.update(
                {"stream": stream, "entry_id": entry_id, "deliveries": delivery.attempt, "at": time.time()}
            )
            pipe.xadd(self.keys.dead, record, maxlen=self.dead_letter_maxlen, approximate=True)
            message = (
                f"job was delivered {delivery.attempt} times and its worker stopped each time; "
                "it was moved to the dead-letter stream"
            )
            answered.append((delivery, JobResult.failure(delivery.request_id or "", "dead_letter", message)))
            log.error(
                "dead-lettered %s (request %s) after %d deliveries",
                entry_id,
                delivery.request_id,
                delivery.attempt,
            )
        pipe.execute()
        self.events.dead_lettered(len(exhausted))
        self.finish(answered)

    def _forget_departed_consumers(self) -> None:
        """Remove consumers that left nothing pending and have been silent for ``consumer_gc_s``."""
        for stream in self._streams:
            for consumer in self.client.xinfo_consumers(stream, GROUP):
                name = _text(consumer["name"])
                if (
                    name != self.consumer
                    and int(consumer["pending"]) == 0
                    and int(consumer["idle"]) > self.consumer_gc_s * 1000
                ):
                    self.client.xgroup_delconsumer(stream, GROUP, name)

    # -- liveness ------------------------------------------------------------------------------------
    def heartbeat(self, info: WorkerInfo, ttl_s: float) -> None:
        payload = encode_heartbeat(info)
        expires = time.time() + ttl_s
        with self._errors():
            pipe = self.client.pipeline(transaction=False)
            pipe.set(self.keys.heartbeat(info.worker_id), payload, px=max(1, int(ttl_s * 1000)))
            pipe.zadd(self.keys.workers, {info.worker_id: expires})
            pipe.expire(self.keys.workers, max(60, int(ttl_s * 10)))
            pipe.execute()

    def withdraw(self) -> None:
        """Delete the heartbeat: readiness drops at once and live workers take over what this one holds."""
        with self._errors():
            pipe = self.client.pipeline(transaction=False)
            pipe.delete(self.keys.heartbeat(self.consumer))
            pipe.zrem(self.keys.workers, self.consumer)
            pipe.execute()

    def keep_alive(self, deliveries: Sequence[Delivery]) -> None:
        with self._backlog_lock:
            by_stream = _ids_by_stream(d.handle for d in [*deliveries, *self._backlog])
        if not by_stream:
            return
        with self._errors():
            pipe = self.client.pipeline(transaction=False)
            for stream, stream_ids in by_stream.items():
                pipe.xclaim(stream, GROUP, self.consumer, 0, list[Any](stream_ids), justid=True)
            pipe.execute()

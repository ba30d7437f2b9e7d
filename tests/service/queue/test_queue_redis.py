"""The Redis queue end to end against a real redis-server: API-side RedisQueue + worker threads.

Every test uses its own key prefix on the session's redis-server. Workers run the real tiny DIC model.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import numpy as np
import pytest
import redis
import redis.asyncio as aredis
from prometheus_client import REGISTRY

from facesr.model.config import DICConfig
from facesr.model.inference import FaceSR
from facesr.service import metrics
from facesr.service.queue import BackendUnavailable, Job, JobOptions, JobResult, QueueFull
from facesr.service.queue.codec import decode_result, encode_job, encode_result
from facesr.service.queue.keys import GROUP, Keys
from facesr.service.queue.redis_backend import RedisQueue
from facesr.service.queue.redis_source import RedisJobSource
from facesr.service.worker.loop import Worker
from tests.service.conftest import queue_settings, worker_settings
from tests.service.queue.conftest import MODEL

pytestmark = pytest.mark.redis


def face(colour: int) -> np.ndarray:
    """A 16x16 RGB uint8 input: a diagonal gradient tinted by ``colour`` (distinct inputs and outputs)."""
    ramp = np.add.outer(np.arange(16), np.arange(16)) * 6
    rgb = np.stack([ramp, ramp[::-1], np.full((16, 16), colour)], axis=-1)
    return ((rgb + colour) % 256).astype(np.uint8)


def job(rid: str, colour: int = 0, *, deadline_s: float = 30.0, model: str = MODEL, **options: bool) -> Job:
    now = time.time()
    return Job(rid, model, face(colour), JobOptions(**options), now, now + deadline_s)


def metric(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def wait_until(predicate, timeout: float = 15.0, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


@contextmanager
def worker_thread(url: str, prefix: str, engine: FaceSR, **options) -> Iterator[Worker]:
    """A Redis worker on a thread, warmed up and ready; stopped (and joined) on exit."""
    source_options = {k: options.pop(k) for k in ("max_deliveries", "claim_idle_ms") if k in options}
    source = RedisJobSource(
        queue_settings(url, prefix=prefix, max_batch_size=options.get("max_batch_size", 4), **source_options),
        events=metrics.PrometheusQueueEvents(),
    )
    worker = Worker(
        {MODEL: engine},
        source,
        worker_settings(
            max_batch_size=options.pop("max_batch_size", 4),
            max_wait_ms=options.pop("max_wait_ms", 50.0),
            warmup="pow2",
            heartbeat_interval_s=0.2,
            heartbeat_ttl_s=2.0,
            maintenance_interval_s=0.1,
            **options,
        ),
    )
    thread = threading.Thread(target=worker.run, name="test-worker", daemon=True)
    thread.start()
    try:
        wait_until(worker.is_ready)
        yield worker
    finally:
        worker.stop()
        thread.join(timeout=20)
        assert not thread.is_alive(), "the worker did not stop"


@asynccontextmanager
async def api_queue(url: str, prefix: str, **options) -> AsyncIterator[RedisQueue]:
    timeouts = {k: options.pop(k) for k in ("connect_timeout_s", "command_timeout_s") if k in options}
    queue = RedisQueue(
        queue_settings(url, prefix=prefix, **options), events=metrics.PrometheusQueueEvents(), **timeouts
    )
    await queue.start()
    try:
        yield queue
    finally:
        await queue.close()


def run(coro, timeout: float = 60.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def stream_length(url: str, prefix: str) -> int:
    with redis.Redis.from_url(url) as client:
        return client.xlen(Keys(prefix).jobs(MODEL))


# -- admission -------------------------------------------------------------------------------------
def test_a_full_queue_refuses_with_retry_after(redis_url: str, prefix: str) -> None:
    async def scenario() -> None:
        async with api_queue(redis_url, prefix, max_queue=3) as queue:
            for i in range(3):
                await queue.submit(job(f"r{i}"))
            with pytest.raises(QueueFull) as refused:
                await queue.submit(job("r3"))
            assert refused.value.depth == 3 and refused.value.limit == 3
            assert refused.value.retry_after_s > 0
            assert (await queue.status()).depth == 3

    run(scenario())
    assert stream_length(redis_url, prefix) == 3  # the refused job was never added


def test_admission_is_atomic_across_api_processes(redis_url: str, prefix: str) -> None:
    async def scenario() -> list[object]:
        async with (
            api_queue(redis_url, prefix, max_queue=5) as first,
            api_queue(redis_url, prefix, max_queue=5) as second,
        ):
            submissions = [(first, second)[i % 2].submit(job(f"r{i}")) for i in range(24)]
            return await asyncio.gather(*submissions, return_exceptions=True)

    outcomes = run(scenario())
    admitted = [o for o in outcomes if isinstance(o, asyncio.Future)]
    refused = [o for o in outcomes if isinstance(o, QueueFull)]
    assert len(admitted) == 5 and len(refused) == 19
    assert stream_length(redis_url, prefix) == 5


# -- batching and correctness ----------------------------------------------------------------------
def test_concurrent_jobs_are_batched_and_each_reply_reaches_its_caller(
    redis_url: str, prefix: str, engine: FaceSR
) -> None:
    colours = [0, 60, 120, 180, 240, 30]
    batches_before = metric("facesr_batches_total")
    inferences_before = metric("facesr_inferences_total")

    async def scenario() -> list[JobResult]:
        async with api_queue(redis_url, prefix) as api_a, api_queue(redis_url, prefix) as api_b:
            futures = await asyncio.gather(
                *[
                    (api_a, api_b)[i % 2].submit(
                        job(f"r{i}", colour, return_steps=(i == 0), landmarks=(i != 1))
                    )
                    for i, colour in enumerate(colours)
                ]
            )
            return list(await asyncio.gather(*futures))

    with worker_thread(redis_url, prefix, engine, max_batch_size=4, max_wait_ms=400) as worker:
        results = run(scenario())

    direct = engine.enhance_tensor(np.stack([face(c) for c in colours]), return_steps=True)
    for i, (result, expected) in enumerate(zip(results, direct, strict=True)):
        assert result.ok, result.error_message
        assert result.request_id == f"r{i}"
        image = result.sr_rgb.astype(int)
        own = np.abs(image - expected.image.astype(int)).max()
        others = [np.abs(image - d.image.astype(int)).mean() for j, d in enumerate(direct) if j != i]
        assert own <= 1, "the reply must be this caller's own face (batched math may differ by rounding)"
        assert min(others) > 2, "inputs of different colours must give clearly different faces"
        assert result.model_id == engine.model_id and result.worker_id == worker.worker_id
        assert result.timings["queue"] >= 0 and result.timings["compute"] > 0
    batch_sizes = [r.timings["batch_size"] for r in results]
    assert max(batch_sizes) > 1, f"no batching happened: {batch_sizes}"
    assert metric("facesr_inferences_total") - inferences_before == len(colours)
    assert metric("facesr_batches_total") - batches_before < len(colours)

    # options travel with each job
    assert results[0].step_rgb is not None and len(results[0].step_rgb) == DICConfig.tiny().num_steps
    np.testing.assert_array_equal(results[0].step_rgb[-1], results[0].sr_rgb)
    assert all(r.step_rgb is None for r in results[1:])
    assert results[1].landmarks is None
    landmarks = np.asarray(results[2].landmarks)
    assert landmarks.shape == (68, 3), "x, y and the confidence of each point"
    np.testing.assert_allclose(landmarks[:, :2], direct[2].landmarks, atol=0.05)
    np.testing.assert_allclose(landmarks[:, 2], direct[2].confidence, atol=1e-3)


def test_status_reports_ready_workers_their_models_and_depth(
    redis_url: str, prefix: str, engine: FaceSR
) -> None:
    async def before() -> None:
        async with api_queue(redis_url, prefix) as queue:
            status = await queue.status()
            assert status.reachable and status.ready_workers == 0 and status.models == {}

    async def during() -> None:
        async with api_queue(redis_url, prefix) as queue:
            status = await queue.status()
            assert status.ready_workers == 1
            assert status.models[MODEL]["model_id"] == engine.model_id
            assert status.models[MODEL]["config"] == DICConfig.tiny().to_dict()

    run(before())
    with worker_thread(redis_url, prefix, engine):
        run(during())


# -- deadlines and cancellation --------------------------------------------------------------------
def test_expired_jobs_are_answered_by_the_api_and_skipped_by_the_worker(
    redis_url: str, prefix: str, engine: FaceSR
) -> None:
    expired_before = metric("facesr_expired_total")

    async def submit_and_wait(queue: RedisQueue) -> tuple[JobResult, asyncio.Future[JobResult]]:
        short = await queue.submit(job("short", 10, deadline_s=0.3))
        long = await queue.submit(job("long", 20, deadline_s=60))
        started = time.monotonic()
        result = await short  # no worker yet: the API gives up at the deadline
        assert time.monotonic() - started < 2.0
        return result, long

    async def scenario() -> tuple[JobResult, JobResult, int]:
        async with api_queue(redis_url, prefix) as queue:
            short, long_future = await submit_and_wait(queue)
            with worker_thread(redis_url, prefix, engine):
                long = await long_future
                await asyncio.to_thread(wait_until, lambda: stream_length(redis_url, prefix) == 0)
                await asyncio.sleep(0.1)  # the skipped job's reply arrives late and is dropped
            return short, long, queue.late_replies

    short, long, late = run(scenario())
    assert short.error_kind == "expired" and not short.ok
    assert long.ok
    assert metric("facesr_expired_total") - expired_before == 1
    assert late >= 1


def test_cancelled_jobs_are_skipped_by_the_worker(redis_url: str, prefix: str, engine: FaceSR) -> None:
    cancelled_before = metric("facesr_cancelled_total")

    async def scenario() -> tuple[bool, JobResult]:
        async with api_queue(redis_url, prefix) as queue:
            explicit = await queue.submit(job("explicit", 10))
            abandoned = await queue.submit(job("abandoned", 20))
            kept = await queue.submit(job("kept", 30))
            explicit.cancel()  # e.g. the client disconnected: cancelling the future is the cancel API
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(abandoned, 0.05)  # the caller's own timeout cancels the job too
            await asyncio.sleep(0.1)
            with worker_thread(redis_url, prefix, engine):
                result = await kept
                await asyncio.to_thread(wait_until, lambda: stream_length(redis_url, prefix) == 0)
            return explicit.cancelled(), result

    explicit_cancelled, kept = run(scenario())
    assert explicit_cancelled
    assert kept.ok
    assert metric("facesr_cancelled_total") - cancelled_before == 2


# -- bad input ------------------------------------------------------------------------------------
def test_a_bad_item_gets_its_own_error_and_the_rest_of_the_batch_succeeds(
    redis_url: str, prefix: str, engine: FaceSR
) -> None:
    keys = Keys(prefix)

    async def scenario() -> dict[str, JobResult]:
        raw = aredis.Redis.from_url(redis_url)
        async with api_queue(redis_url, prefix) as queue:
            small = np.zeros((4, 4, 3), np.uint8)  # a valid frame, but not the model's input size
            wrong_size = Job("short-bytes", MODEL, small, JobOptions(), time.time(), time.time() + 30)
            futures = {
                "good-1": await queue.submit(job("good-1", 40)),
                "short-bytes": await queue.submit(wrong_size),
                "good-2": await queue.submit(job("good-2", 80)),
            }
            # a foreign producer's entry with unreadable metadata, addressed to another reply list
            fields = encode_job(job("garbled", 1), "probe")
            fields["meta"] = b"{broken"
            await raw.xadd(keys.jobs(MODEL), fields)
            with worker_thread(redis_url, prefix, engine, max_batch_size=4, max_wait_ms=200):
                results = {rid: await future for rid, future in futures.items()}
                _, frame = await raw.blpop([keys.reply("probe")], timeout=10)
                results["garbled"] = decode_result(frame)
            await raw.aclose()
            return results

    results = run(scenario())
    assert results["good-1"].ok and results["good-2"].ok
    assert results["good-1"].timings["batch_size"] == 2.0  # computed together, without the bad ones
    assert (
        results["short-bytes"].error_kind == "bad_input"
        and "16 x 16 x 3" in results["short-bytes"].error_message
    )
    assert results["garbled"].error_kind == "bad_input" and "JSON" in results["garbled"].error_message
    assert stream_length(redis_url, prefix) == 0


# -- redelivery limits -----------------------------------------------------------------------------
def test_a_job_that_keeps_losing_its_worker_is_dead_lettered_and_its_caller_told(
    redis_url: str, prefix: str, engine: FaceSR
) -> None:
    keys = Keys(prefix)
    dead_before = metric("facesr_dead_lettered_total")

    def two_workers_die_holding_it() -> None:
        with redis.Redis.from_url(redis_url) as client:
            assert client.xreadgroup(GROUP, "ghost-1", {keys.jobs(MODEL): ">"}, count=1)  # delivery 1
            time.sleep(0.25)
            claimed = client.xautoclaim(keys.jobs(MODEL), GROUP, "ghost-2", 200, count=1)  # delivery 2
            assert claimed[1]
            time.sleep(0.25)

    async def scenario() -> JobResult:
        async with api_queue(redis_url, prefix) as queue:
            future = await queue.submit(job("poison", 5))
            await asyncio.to_thread(two_workers_die_holding_it)
            with worker_thread(redis_url, prefix, engine, max_deliveries=2, claim_idle_ms=200):
                return await future

    result = run(scenario())
    assert result.error_kind == "dead_letter" and not result.ok
    assert metric("facesr_dead_lettered_total") - dead_before == 1
    with redis.Redis.from_url(redis_url) as client:
        assert client.xlen(keys.jobs(MODEL)) == 0
        [(_, fields)] = client.xrange(keys.dead)
        assert fields[b"rid"] == b"poison" and int(fields[b"deliveries"]) == 3
        assert client.xpending(keys.jobs(MODEL), GROUP)["pending"] == 0


# -- Redis outages ---------------------------------------------------------------------------------
def test_redis_outage_fails_fast_and_everything_recovers_after_restart(
    redis_server, redis_url: str, prefix: str, engine: FaceSR
) -> None:
    async def scenario() -> None:
        async with api_queue(redis_url, prefix) as queue:
            first = await (await queue.submit(job("before", 10)))
            assert first.ok
            orphan = await queue.submit(job("orphan", 20, model="nobody-serves-this"))

            await asyncio.to_thread(redis_server.stop)
            try:
                started = time.monotonic()
                with pytest.raises(BackendUnavailable):
                    await queue.submit(job("during", 30))
                assert time.monotonic() - started < 3.0, "submit must fail fast while Redis is down"
                with pytest.raises(BackendUnavailable):
                    await asyncio.wait_for(orphan, 5.0)  # waiting callers are released, not left hanging
                assert not (await queue.status()).reachable
            finally:
                await asyncio.to_thread(redis_server.start)

            # the API reconnects on its own; the worker thread kept running and reconnects with backoff
            deadline = time.monotonic() + 20
            while True:
                try:
                    after = await asyncio.wait_for(await queue.submit(job("after", 40)), 15)
                    break
                except BackendUnavailable:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)
            assert after.ok

    with worker_thread(redis_url, prefix, engine) as worker:
        run(scenario(), timeout=90)
        assert worker.is_ready()


def test_a_frozen_redis_is_answered_at_once_after_the_first_timeout(
    redis_server, redis_url: str, prefix: str
) -> None:
    """SIGSTOP: connections are accepted but nothing answers, so every command would wait its timeout."""

    async def timed(call) -> float:
        started = time.monotonic()
        await call
        return time.monotonic() - started

    async def refused_submit(queue: RedisQueue, rid: str) -> None:
        with pytest.raises(BackendUnavailable):
            await queue.submit(job(rid))

    async def scenario() -> None:
        async with api_queue(redis_url, prefix, command_timeout_s=1.0) as queue:
            assert (await queue.status()).reachable
            redis_server.process.send_signal(signal.SIGSTOP)
            try:
                assert not (await queue.status()).reachable  # waits out one command timeout
                waits = []
                for attempt in range(20):  # 2 s: two re-checks, each one PING of at most 0.5 s
                    waits.append(await timed(refused_submit(queue, f"frozen-{attempt}")))
                    started = time.monotonic()
                    assert not (await queue.status()).reachable
                    waits.append(time.monotonic() - started)
                    await asyncio.sleep(0.1)
                assert max(waits) < 0.7, "nothing may wait out the 1 s command timeout again"
                assert sum(wait > 0.1 for wait in waits) <= 3, f"only the re-checks may wait: {waits}"
            finally:
                redis_server.process.send_signal(signal.SIGCONT)
            deadline = time.monotonic() + 5
            while not (await queue.status()).reachable:
                assert time.monotonic() < deadline, "the queue did not notice that Redis answers again"
                await asyncio.sleep(0.1)
            future = await queue.submit(job("thawed"))  # admitted (no worker here to answer it)
            assert not future.done()

    run(scenario(), timeout=60)
    assert stream_length(redis_url, prefix) == 1


def test_the_reply_dispatcher_survives_an_unexpected_error(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dead dispatcher would leave every later caller waiting for its deadline while /readyz is green."""
    real_blpop = aredis.Redis.blpop
    failures: list[str] = []

    async def blpop_failing_once(self, *args, **kwargs):
        if not failures:
            failures.append("raised")
            raise RuntimeError("a bug outside redis-py's error hierarchy")
        return await real_blpop(self, *args, **kwargs)

    monkeypatch.setattr(aredis.Redis, "blpop", blpop_failing_once)

    def answer(request_id: str, api_id: str) -> None:
        with redis.Redis.from_url(redis_url) as client:
            reply = JobResult(request_id, ok=True, model_id="m-1", timings={"compute": 0.001})
            client.rpush(Keys(prefix).reply(api_id), encode_result(reply))

    async def scenario() -> JobResult:
        async with api_queue(redis_url, prefix) as queue:
            while not failures:
                await asyncio.sleep(0.01)
            future = await queue.submit(job("after-the-bug"))
            await asyncio.to_thread(answer, "after-the-bug", queue.api_id)
            return await asyncio.wait_for(future, 10.0)

    result = run(scenario())
    assert result.ok and result.model_id == "m-1"


@pytest.mark.slow
def test_one_worker_serves_several_models_without_mixing_them_in_a_batch(
    redis_url: str, prefix: str, engine: FaceSR
) -> None:
    other = FaceSR.from_config(DICConfig.tiny(), seed=1, name="other")
    source = RedisJobSource(
        queue_settings(redis_url, prefix=prefix, max_batch_size=4), events=metrics.PrometheusQueueEvents()
    )
    worker = Worker(
        {MODEL: engine, "other": other},
        source,
        worker_settings(max_batch_size=4, max_wait_ms=100, warmup="pow2"),
    )
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()

    async def scenario() -> list[JobResult]:
        async with api_queue(redis_url, prefix) as queue:
            models = [MODEL, "other", MODEL, "other", "other"]
            futures = await asyncio.gather(
                *[queue.submit(job(f"r{i}", 30 * i, model=m)) for i, m in enumerate(models)]
            )
            return list(await asyncio.gather(*futures))

    try:
        wait_until(worker.is_ready)
        results = run(scenario())
    finally:
        worker.stop()
        thread.join(20)
    assert [r.model_id for r in results] == [
        engine.model_id,
        other.model_id,
        engine.model_id,
        other.model_id,
        other.model_id,
    ]
    expected = [engine, other, engine, other, other]
    for i, (result, model) in enumerate(zip(results, expected, strict=True)):
        direct = model.enhance_tensor(face(30 * i)[None])[0].image
        assert np.abs(result.sr_rgb.astype(int) - direct).max() <= 1
    assert all(r.timings["batch_size"] <= 3 for r in results)  # never more than one model's jobs


def test_entries_read_but_not_started_are_handed_back_on_exit(redis_url: str, prefix: str) -> None:
    keys = Keys(prefix)
    with redis.Redis.from_url(redis_url) as client:
        for model in (MODEL, "other"):
            client.xgroup_create(keys.jobs(model), GROUP, id="0", mkstream=True)
        for i, model in enumerate([MODEL, "other", "other"]):
            client.xadd(keys.jobs(model), encode_job(job(f"r{i}", model=model), "api"))

    leaving = RedisJobSource(
        queue_settings(redis_url, prefix=prefix, claim_idle_ms=600_000),
        events=metrics.PrometheusQueueEvents(),
    )
    leaving.open("leaving", [MODEL, "other"])
    first = leaving.next_batch(4, 0.01, threading.Event())  # one model's batch; the other waits in hand
    assert len({d.job.model for d in first}) == 1
    leaving.finish([(d, JobResult(request_id=d.request_id, ok=True)) for d in first])
    leaving.close()

    taking_over = RedisJobSource(
        queue_settings(redis_url, prefix=prefix, claim_idle_ms=600_000),
        events=metrics.PrometheusQueueEvents(),
    )
    taking_over.open("taking-over", [MODEL, "other"])
    taking_over.maintain()  # claims only entries idle for 10 minutes, which the handed-back ones are
    rest = taking_over.next_batch(4, 0.01, threading.Event())
    taking_over.close()
    assert sorted(d.request_id for d in [*first, *rest]) == ["r0", "r1", "r2"]
    assert all(d.attempt == 1 for d in rest)  # a graceful hand-back is not a failed delivery


def test_rolling_restarts_never_dead_letter_a_handed_back_job(redis_url: str, prefix: str) -> None:
    """Each worker reads the job, is stopped before starting it and hands it back; with max_deliveries=1
    any counted hand-back would dead-letter it."""
    keys = Keys(prefix)
    with redis.Redis.from_url(redis_url) as client:
        for model in (MODEL, "other"):
            client.xgroup_create(keys.jobs(model), GROUP, id="0", mkstream=True)
        client.xadd(keys.jobs(MODEL), encode_job(job("started"), "api"))
        client.xadd(keys.jobs("other"), encode_job(job("waiting", model="other"), "api"))

    first = RedisJobSource(
        queue_settings(redis_url, prefix=prefix, max_deliveries=1, claim_idle_ms=600_000),
        events=metrics.PrometheusQueueEvents(),
    )
    first.open("restart-0", [MODEL, "other"])
    started = first.next_batch(4, 0.01, threading.Event())  # the other model's job waits in hand
    assert [d.request_id for d in started] == ["started"]
    first.finish([(d, JobResult(request_id=d.request_id, ok=True)) for d in started])
    first.close()
    for restart in range(1, 5):
        source = RedisJobSource(
            queue_settings(redis_url, prefix=prefix, max_deliveries=1, claim_idle_ms=600_000)
        )
        source.open(f"restart-{restart}", [MODEL, "other"])
        source.maintain()  # takes the handed-back job into its hand, then leaves (SIGTERM) before starting it
        source.close()
    last = RedisJobSource(
        queue_settings(redis_url, prefix=prefix, max_deliveries=1, claim_idle_ms=600_000),
        events=metrics.PrometheusQueueEvents(),
    )
    last.open("last", [MODEL, "other"])
    last.maintain()
    served = last.next_batch(4, 0.01, threading.Event())
    last.finish([(d, JobResult(request_id=d.request_id, ok=True)) for d in served])
    last.close()
    assert [(d.request_id, d.attempt) for d in served] == [("waiting", 1)]
    with redis.Redis.from_url(redis_url) as client:
        assert client.xlen(keys.dead) == 0


# -- workers that vanish -------------------------------------------------------------------------------
def test_jobs_of_a_worker_whose_heartbeat_expired_are_taken_over_before_claim_idle(
    redis_url: str, prefix: str, engine: FaceSR
) -> None:
    keys = Keys(prefix)
    redelivered_before = metric("facesr_redelivered_total")

    def a_worker_reads_it_and_dies() -> None:
        with redis.Redis.from_url(redis_url) as client:  # no heartbeat key: it died over a TTL ago
            assert client.xreadgroup(GROUP, "vanished", {keys.jobs(MODEL): ">"}, count=1)

    async def scenario() -> JobResult:
        async with api_queue(redis_url, prefix) as queue:
            future = await queue.submit(job("orphan", 3))
            await asyncio.to_thread(a_worker_reads_it_and_dies)
            # claim_idle_ms alone would leave the job alone for a minute, past the 10 s wait below.
            with worker_thread(redis_url, prefix, engine, claim_idle_ms=60_000):
                return await asyncio.wait_for(future, 10.0)

    result = run(scenario())
    assert result.ok and result.request_id == "orphan"
    assert metric("facesr_redelivered_total") - redelivered_before == 1


class HungEngine:
    """Delegates to a real engine; once ``armed``, a model call blocks until ``release`` (a hung kernel)."""

    def __init__(self, inner: FaceSR) -> None:
        self.inner = inner
        self.card, self.model_id = inner.card, inner.model_id
        self.device, self.dtype, self.config = inner.device, inner.dtype, inner.config
        self.armed = False
        self.entered = threading.Event()
        self.release = threading.Event()

    def enhance_tensor(self, lr: np.ndarray, *, return_steps: bool = False):
        if self.armed:
            self.entered.set()
            self.release.wait(timeout=30)
        return self.inner.enhance_tensor(lr, return_steps=return_steps)


def test_jobs_of_a_stalled_worker_are_taken_over_by_a_live_one(
    redis_url: str, prefix: str, engine: FaceSR
) -> None:
    hung = HungEngine(engine)

    async def scenario() -> tuple[JobResult, bool]:
        async with api_queue(redis_url, prefix) as queue:
            with worker_thread(redis_url, prefix, hung, claim_idle_ms=60_000, batch_timeout_s=0.5) as stuck:
                hung.armed = True
                future = await queue.submit(job("stuck", 7))
                assert await asyncio.to_thread(hung.entered.wait, 10.0)
                try:
                    with worker_thread(redis_url, prefix, engine, claim_idle_ms=60_000):
                        result = await asyncio.wait_for(future, 10.0)  # long before claim_idle_ms
                        ready_while_stuck = stuck.is_ready()
                finally:
                    hung.release.set()
            return result, ready_while_stuck

    result, ready_while_stuck = run(scenario())
    assert result.ok and result.request_id == "stuck"
    assert not ready_while_stuck


def test_a_live_owner_keeps_its_jobs_and_racing_workers_take_an_orphan_once(
    redis_url: str, prefix: str
) -> None:
    keys = Keys(prefix)
    with redis.Redis.from_url(redis_url) as client:
        client.xgroup_create(keys.jobs(MODEL), GROUP, id="0", mkstream=True)
        client.xadd(keys.jobs(MODEL), encode_job(job("held"), "api"))
        client.xadd(keys.jobs(MODEL), encode_job(job("orphaned", 1), "api"))
        client.set(keys.heartbeat("alive"), b"{}", px=60_000)
        assert client.xreadgroup(GROUP, "alive", {keys.jobs(MODEL): ">"}, count=1)
        assert client.xreadgroup(GROUP, "dead", {keys.jobs(MODEL): ">"}, count=1)
    time.sleep(1.2)  # both entries are now idle longer than the orphan claim's minimum

    racers = []
    for name in ("racer-a", "racer-b"):
        source = RedisJobSource(
            queue_settings(redis_url, prefix=prefix, claim_idle_ms=600_000),
            events=metrics.PrometheusQueueEvents(),
        )
        source.open(name, [MODEL])
        racers.append(source)
    for source in racers:
        source.maintain()
    taken = [[d.request_id for d in source._take_backlog(4)] for source in racers]
    for source in racers:
        source.close()
    assert sorted(taken) == [[], ["orphaned"]]
    with redis.Redis.from_url(redis_url) as client:
        [held] = client.xpending_range(keys.jobs(MODEL), GROUP, "-", "+", 10, consumername="alive")
        assert held["times_delivered"] == 1


def test_a_reconnect_never_hands_a_batch_in_progress_to_a_second_runner(redis_url: str, prefix: str) -> None:
    """Runners share one source; after a dropped connection the consumer re-reads the entries it owns,
    and the one a runner is still computing must not be handed to another runner."""
    keys = Keys(prefix)
    with redis.Redis.from_url(redis_url) as client:
        client.xgroup_create(keys.jobs(MODEL), GROUP, id="0", mkstream=True)
        for i in range(2):
            client.xadd(keys.jobs(MODEL), encode_job(job(f"r{i}"), "api"))
    source = RedisJobSource(
        queue_settings(redis_url, prefix=prefix, claim_idle_ms=600_000),
        events=metrics.PrometheusQueueEvents(),
    )
    source.open("two-runners", [MODEL])
    stop = threading.Event()
    in_progress = source.next_batch(1, 0.0, stop)  # runner A is computing r0
    assert [d.request_id for d in in_progress] == ["r0"]

    # Any Redis error on the way (a dropped connection, a timeout) makes the consumer re-read the entries
    # it owns before reading new ones; this is the state such an error leaves behind.
    source._reread_own = True
    second = source.next_batch(4, 0.0, stop)  # runner B
    assert [d.request_id for d in second] == ["r1"]

    source.finish([(d, JobResult(request_id=d.request_id or "", ok=True)) for d in [*in_progress, *second]])
    assert source.next_batch(4, 0.0, stop) == []
    source.close()


def test_a_batch_released_unanswered_is_handed_out_again_after_a_reconnect(
    redis_url: str, prefix: str
) -> None:
    """A batch can end without an answer (Redis failed while the worker asked which jobs were cancelled);
    the worker releases it, and the next re-read of the consumer's entries hands it out again."""
    keys = Keys(prefix)
    with redis.Redis.from_url(redis_url) as client:
        client.xgroup_create(keys.jobs(MODEL), GROUP, id="0", mkstream=True)
        client.xadd(keys.jobs(MODEL), encode_job(job("r0"), "api"))
    source = RedisJobSource(
        queue_settings(redis_url, prefix=prefix, claim_idle_ms=600_000),
        events=metrics.PrometheusQueueEvents(),
    )
    source.open("one-runner", [MODEL])
    stop = threading.Event()
    batch = source.next_batch(1, 0.0, stop)
    source.release(batch)  # never finished
    source._reread_own = True  # the state a Redis error leaves behind (see the test above)

    again = source.next_batch(1, 0.0, stop)

    assert [d.request_id for d in again] == ["r0"]
    source.finish([(d, JobResult(request_id=d.request_id or "", ok=True)) for d in again])
    source.close()

"""What the service reads back from Redis is untrusted input: crafted job entries, heartbeats and reply
frames, written straight into Redis with redis-py, never crash a worker or an API process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from typing import Any

import pytest
import redis
import redis.asyncio as aredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from facesr.model.inference import FaceSR
from facesr.service.queue.codec import (
    CodecError,
    decode_heartbeat,
    decode_job,
    decode_result,
    encode_job,
    encode_result,
)
from facesr.service.queue.jobs import JobResult
from facesr.service.queue.keys import Keys
from tests.service.queue.test_queue_redis import (
    MODEL,
    api_queue,
    face,
    job,
    metric,
    run,
    stream_length,
    wait_until,
    worker_thread,
)

pytestmark = pytest.mark.redis


def malformed(kind: str) -> float:
    return metric("facesr_malformed_redis_data_total", {"kind": kind})


def good_fields(rid: str = "good") -> dict[str, bytes]:
    return encode_job(job(rid), "api-probe")


def with_meta(**changes: Any) -> dict[str, bytes]:
    fields = good_fields("crafted")
    meta = json.loads(fields["meta"])
    meta.update(changes)
    fields["meta"] = json.dumps(meta).encode()
    return fields


# Entries an attacker (or a producer of another version) can write; each once killed or could kill a worker.
CRAFTED: dict[str, dict[str, bytes]] = {
    "huge integer": {**good_fields("huge-int"), "meta": b'{"v":1,"opts":{},"enq":' + b"9" * 400 + b"}"},
    "deep nesting": {**good_fields("deep"), "meta": b"[" * 100_000 + b"]" * 100_000},
    "meta not an object": {**good_fields("list"), "meta": b"[1,2,3]"},
    "NaN deadline": {**good_fields("nan"), "meta": good_fields()["meta"].replace(b'"dl":', b'"dl":NaN,"x":')},
    "options of the wrong type": with_meta(opts={"return_steps": "yes", "landmarks": 1}),
    "shape of strings": with_meta(shape=["16", "16"]),
    "absurd shape": with_meta(shape=[10**6, 10**6]),
    "wrong byte count": {**good_fields("short"), "lr": b"\x00" * 10},
    "binary request id": {**good_fields(), "rid": b"\xff\xfe\x00"},
    "reply address with a colon": {**good_fields("colon"), "reply": b"api:other"},
    "huge request id": {**good_fields(), "rid": b"r" * 100_000},
    "no fields": {"junk": b"1"},
}


def test_every_decoder_raises_only_codec_errors_on_the_crafted_entries() -> None:
    for name, fields in CRAFTED.items():
        with pytest.raises(CodecError):
            decode_job(fields)
        assert name


@pytest.mark.slow
def test_a_worker_survives_crafted_entries_dead_letters_each_with_a_reason_and_keeps_serving(
    redis_url: str, prefix: str, engine: FaceSR
) -> None:
    keys = Keys(prefix)
    malformed_before = malformed("job")
    client = redis.Redis.from_url(redis_url)
    for fields in CRAFTED.values():
        client.xadd(keys.jobs(MODEL), fields)

    async def scenario() -> JobResult:
        async with api_queue(redis_url, prefix) as queue:
            with worker_thread(redis_url, prefix, engine):
                await asyncio.to_thread(wait_until, lambda: stream_length(redis_url, prefix) == 0)
                return await (await queue.submit(job("after", 40)))  # served by the same worker

    result = run(scenario())
    assert result.ok, result.error_message
    dead = client.xrange(keys.dead)
    assert len(dead) == len(CRAFTED)
    assert all(entry[b"reason"] for _, entry in dead), "every dead letter says why"
    assert malformed("job") - malformed_before == len(CRAFTED)
    client.close()


# -- generated entries --------------------------------------------------------------------------------
field_values = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b"1", b"{}", b"[]", b"null", b'{"v":1}', b"NaN", b"9" * 50, b"-0", b'"x"']),
)
entries = st.dictionaries(
    st.sampled_from(["rid", "model", "reply", "meta", "lr", "other"]), field_values, min_size=1, max_size=6
)


def _mutated_meta(meta: dict[str, Any]) -> st.SearchStrategy[bytes]:
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
        max_leaves=8,
    )
    return st.builds(
        lambda key, value: json.dumps({**meta, key: value}).encode(),
        st.sampled_from(["v", "opts", "enq", "dl", "shape", "new"]),
        json_values,
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(data=st.data())
def test_the_job_decoder_never_raises_anything_but_a_codec_error(data: st.DataObject) -> None:
    base = good_fields("fuzz")
    if data.draw(st.booleans()):
        fields: dict[str, bytes] = data.draw(entries)
    else:
        fields = {**base, "meta": data.draw(_mutated_meta(json.loads(base["meta"])))}
    try:
        decoded, reply_to = decode_job(fields)
    except CodecError:
        return
    assert decoded.lr_rgb.ndim == 3 and reply_to


@settings(max_examples=300, deadline=None, database=None)
@given(frame=st.binary(max_size=256), header=st.binary(max_size=64))
def test_the_reply_and_heartbeat_decoders_never_raise_anything_but_a_codec_error(
    frame: bytes, header: bytes
) -> None:
    for decoder, value in (
        (decode_result, frame),
        (decode_result, len(header).to_bytes(4, "big") + header + frame),
        (decode_heartbeat, frame),
        (decode_heartbeat, header),
    ):
        with contextlib.suppress(CodecError):
            decoder(value)


@pytest.mark.slow
def test_a_few_hundred_generated_entries_never_crash_a_worker(
    redis_url: str, prefix: str, engine: FaceSR
) -> None:
    """Generated entries straight into the stream: each is set aside, the worker keeps serving."""
    keys = Keys(prefix)
    client = redis.Redis.from_url(redis_url)
    written = 0

    @settings(max_examples=300, deadline=None, database=None)
    @given(fields=entries)
    def write(fields: dict[str, bytes]) -> None:
        nonlocal written
        client.xadd(keys.jobs(MODEL), fields)
        written += 1

    write()

    async def scenario() -> JobResult:
        async with api_queue(redis_url, prefix) as queue:
            with worker_thread(redis_url, prefix, engine, max_batch_size=8):
                await asyncio.to_thread(wait_until, lambda: stream_length(redis_url, prefix) == 0, 120.0)
                return await (await queue.submit(job("after", 40)))

    result = run(scenario(), timeout=180)
    assert result.ok, result.error_message
    assert written >= 200
    assert client.xlen(keys.dead) == written
    client.close()


# -- heartbeats and replies read by the API ---------------------------------------------------------------
HOSTILE_HEARTBEATS = [
    b"not json",
    b"[" * 50_000 + b"]" * 50_000,
    b'{"worker_id": "w", "ready": "yes", "models": {}}',
    b'{"worker_id": "w", "ready": true, "models": {"m": 5}}',
    b'{"worker_id": "w", "ready": true, "models": {"m": {"model_id": 7}}}',
    b'{"worker_id": "w", "ready": true, "models": {}, "throughput": ' + b"9" * 400 + b"}",
    b'{"worker_id": "w", "ready": true, "models": {}, "throughput": NaN}',
]


def test_hostile_heartbeats_are_ignored_and_counted(redis_url: str, prefix: str) -> None:
    keys = Keys(prefix)
    client = redis.Redis.from_url(redis_url)
    for index, payload in enumerate(HOSTILE_HEARTBEATS):
        worker_id = f"hostile-{index}"
        client.set(keys.heartbeat(worker_id), payload, ex=60)
        client.zadd(keys.workers, {worker_id: time.time() + 60})
    client.zadd(keys.workers, {"bad:id": time.time() + 60})  # an id that is no valid key name
    before = malformed("heartbeat")

    async def scenario() -> tuple[bool, int]:
        async with api_queue(redis_url, prefix) as queue:
            status = await queue.status()
            return status.reachable, status.ready_workers

    reachable, ready_workers = run(scenario())
    assert reachable and ready_workers == 0
    assert malformed("heartbeat") - before == len(HOSTILE_HEARTBEATS) + 1
    client.close()


def test_a_malformed_reply_frame_is_dropped_without_touching_other_requests(
    redis_url: str, prefix: str
) -> None:
    keys = Keys(prefix)
    before = malformed("reply")

    async def scenario() -> tuple[JobResult, JobResult, bool]:
        raw = aredis.Redis.from_url(redis_url)
        async with api_queue(redis_url, prefix) as queue:
            first = await queue.submit(job("first"))
            second = await queue.submit(job("second"))
            reply_list = keys.reply(queue.api_id)
            good = encode_result(JobResult(request_id="first", ok=True, sr_rgb=face(1)))
            other = encode_result(JobResult(request_id="second", ok=True, sr_rgb=face(2)))
            hostile = b"\x00\x00\x00\x05[[[[[" + b"x" * 10
            deep = len(b"[" * 60_000).to_bytes(4, "big") + b"[" * 60_000
            await raw.rpush(reply_list, hostile, good, deep, b"", other)
            results = await asyncio.wait_for(asyncio.gather(first, second), 10)
            await raw.aclose()
            return results[0], results[1], queue.late_replies == 0

    first, second, none_late = run(scenario())
    assert first.ok and second.ok and none_late
    assert malformed("reply") - before == 3


@pytest.mark.slow
def test_a_frozen_then_thawed_redis_does_not_fail_requests_answered_within_their_deadline(
    redis_server, redis_url: str, prefix: str, engine: FaceSR
) -> None:
    """SIGSTOP longer than the reply listener's read timeout, then SIGCONT: the answer still arrives."""

    async def scenario() -> JobResult:
        async with api_queue(redis_url, prefix) as queue:
            with worker_thread(redis_url, prefix, engine):
                future = await queue.submit(job("frozen", 30, deadline_s=40))
                redis_server.process.send_signal(signal.SIGSTOP)
                try:
                    await asyncio.sleep(6.0)  # the listener's blocking read (5 s socket timeout) times out
                    assert not future.done(), "a frozen Redis must not fail a request that may still succeed"
                finally:
                    redis_server.process.send_signal(signal.SIGCONT)
                return await asyncio.wait_for(future, 30)

    result = run(scenario(), timeout=90)
    assert result.ok, result.error_message

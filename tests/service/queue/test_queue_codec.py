"""The queue's pure parts: wire formats, key names, deadlines on the API side, batch forming and splitting."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import threading
import time

import numpy as np
import pytest
import torch

from facesr.service.queue.backoff import Backoff
from facesr.service.queue.batching import collect_batch
from facesr.service.queue.codec import CodecError, decode_job, decode_result, encode_job, encode_result
from facesr.service.queue.jobs import Job, JobOptions, JobResult
from facesr.service.queue.keys import Keys
from facesr.service.queue.pending import PendingReplies
from facesr.service.worker.isolation import ItemFailure, run_isolating_failures
from facesr.service.worker.loop import warmup_sizes

HR_SHAPE = (128, 128, 3)


def image(value: int, shape: tuple[int, int, int] = HR_SHAPE) -> np.ndarray:
    return np.full(shape, value, dtype=np.uint8)


def assert_same_record(decoded: object, original: object) -> None:
    """Field by field, arrays by value (dataclass equality cannot compare arrays)."""
    assert type(decoded) is type(original)
    for field in dataclasses.fields(original):  # type: ignore[arg-type]
        got, want = getattr(decoded, field.name), getattr(original, field.name)
        if isinstance(want, np.ndarray):
            assert isinstance(got, np.ndarray) and got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)
        elif isinstance(want, list) and want and isinstance(want[0], np.ndarray):
            assert len(got) == len(want)
            for a, b in zip(got, want, strict=True):
                np.testing.assert_array_equal(a, b)
        else:
            assert got == want, field.name


def _job(**overrides: object) -> Job:
    fields: dict[str, object] = {
        "request_id": "req-1",
        "model": "dic",
        "lr_rgb": np.arange(768, dtype=np.uint16).astype(np.uint8).reshape(16, 16, 3),
        "options": JobOptions(return_steps=True, landmarks=False),
        "enqueued_at": 1_700_000_000.25,
        "deadline": 1_700_000_003.5,
    }
    fields.update(overrides)
    return Job(**fields)  # type: ignore[arg-type]


def test_job_round_trips_through_a_stream_entry_as_bytes_and_json() -> None:
    job = _job()
    fields = encode_job(job, "api-7")
    assert all(isinstance(value, bytes) for value in fields.values())
    assert fields["lr"] == job.lr_rgb.tobytes()  # raw bytes, no encoding layer
    assert json.loads(fields["meta"])["shape"] == [16, 16]  # metadata is plain JSON (never pickle)
    decoded, reply_to = decode_job(fields)
    assert_same_record(decoded, job)
    assert reply_to == "api-7"


def test_job_without_deadline_round_trips_as_infinite() -> None:
    decoded, _ = decode_job(encode_job(_job(deadline=math.inf), "api"))
    assert decoded.deadline == math.inf


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda f: f.pop("meta"),
        lambda f: f.update(meta=b"{not json"),
        lambda f: f.update(meta=json.dumps({"v": 99}).encode()),
        lambda f: f.update(meta=json.dumps({"v": 1, "opts": {}}).encode()),
        lambda f: f.update(rid=b"\xff\xfe"),
        lambda f: f.update(lr=f["lr"][:-1]),  # fewer bytes than the declared shape
        lambda f: f.update(meta=f["meta"].replace(b'"shape":[16,16]', b'"shape":[16,-16]')),
        lambda f: f.update(meta=f["meta"].replace(b'"shape":[16,16]', b'"shape":[99999,1]')),
        lambda f: f.update(meta=f["meta"].replace(b',"shape":[16,16]', b"")),
    ],
)
def test_malformed_job_entries_raise_codec_error(corrupt) -> None:
    fields = encode_job(_job(), "api")
    corrupt(fields)
    with pytest.raises(CodecError):
        decode_job(fields)


def test_successful_result_round_trips_with_steps_and_landmarks() -> None:
    result = JobResult(
        request_id="req-1",
        ok=True,
        sr_rgb=image(7),
        step_rgb=[image(i) for i in range(4)],
        landmarks=[[float(i), float(i) + 0.5, 0.25] for i in range(68)],
        landmark_status="passed",
        model_id="dic-abc",
        worker_id="w1",
        timings={"queue": 0.01, "compute": 0.02, "batch_size": 4.0},
    )
    decoded = decode_result(encode_result(result))
    assert_same_record(decoded, result)


def test_images_of_one_reply_must_share_a_size() -> None:
    result = JobResult(request_id="r", ok=True, sr_rgb=image(1), step_rgb=[image(2, (64, 64, 3))])
    with pytest.raises(ValueError, match="share a size"):
        encode_result(result)


def test_error_result_round_trips_without_images() -> None:
    result = JobResult.failure("req-2", "bad_input", "input must be 768 bytes", worker_id="w1")
    decoded = decode_result(encode_result(result))
    assert_same_record(decoded, result)
    assert decoded.sr_rgb is None and decoded.step_rgb is None


def test_result_failure_refuses_unknown_error_kinds() -> None:
    with pytest.raises(ValueError, match="unknown error kind"):
        JobResult.failure("r", "oops", "no")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\x00\x00",
        b"\xff\xff\xff\xff{}",
        b"\x00\x00\x00\x02{}",
        b"\x00\x00\x00\x04nope",
    ],
)
def test_malformed_reply_frames_raise_codec_error(frame: bytes) -> None:
    with pytest.raises(CodecError):
        decode_result(frame)


def test_reply_frame_with_truncated_blob_is_refused() -> None:
    frame = encode_result(JobResult(request_id="r", ok=True, sr_rgb=image(120)))
    with pytest.raises(CodecError, match="do not add up"):
        decode_result(frame[:-1])


def test_keys_share_one_prefix_and_refuse_names_that_escape_it() -> None:
    keys = Keys("svc")
    assert keys.jobs("dic-v1") == "svc:jobs:dic-v1"
    assert keys.reply("api-1") == "svc:reply:api-1"
    assert keys.dead == "svc:dead"
    for bad in ("a:b", "", "a b", "*"):
        with pytest.raises(ValueError, match="invalid model name"):
            keys.jobs(bad)
    with pytest.raises(ValueError, match="invalid queue prefix"):
        Keys("bad:prefix")


def test_backoff_grows_is_capped_and_resets() -> None:
    backoff = Backoff(base_s=0.1, cap_s=1.0)
    delays = [backoff.next() for _ in range(12)]
    assert all(0.05 <= d <= 1.0 for d in delays)
    assert max(delays[6:]) > 0.2  # later attempts may wait longer than the base
    backoff.reset()
    assert backoff.next() <= 0.1


def test_warmup_sizes_cover_every_size_or_powers_of_two_plus_max() -> None:
    assert warmup_sizes(5, "all") == [1, 2, 3, 4, 5]
    assert warmup_sizes(12, "pow2") == [1, 2, 4, 8, 12]
    assert warmup_sizes(8, "pow2") == [1, 2, 4, 8]
    with pytest.raises(ValueError, match="max_batch_size"):
        warmup_sizes(0, "all")


# -- API-side deadlines and cancellation -------------------------------------------------------------
def test_pending_future_expires_at_its_deadline_and_abandons_the_job() -> None:
    abandoned: list[str] = []

    async def scenario() -> JobResult:
        pending = PendingReplies(on_abandon=abandoned.append)
        future = pending.add("r1", time.time() + 0.05)
        result = await asyncio.wait_for(future, 2.0)
        await asyncio.sleep(0)
        assert len(pending) == 0
        return result

    result = asyncio.run(scenario())
    assert result.error_kind == "expired" and not result.ok
    assert abandoned == ["r1"]


def test_cancelled_future_abandons_the_job_but_a_resolved_one_does_not() -> None:
    abandoned: list[str] = []

    async def scenario() -> None:
        pending = PendingReplies(on_abandon=abandoned.append)
        waiting = pending.add("gone", math.inf)
        answered = pending.add("done", math.inf)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(waiting, 0.01)  # wait_for cancels the future on timeout
        assert pending.resolve(JobResult(request_id="done", ok=True))
        assert (await answered).ok
        assert not pending.resolve(JobResult(request_id="done", ok=True))  # a duplicate is not delivered
        assert not pending.resolve(JobResult(request_id="unknown", ok=True))
        await asyncio.sleep(0)
        assert len(pending) == 0

    asyncio.run(scenario())
    assert abandoned == ["gone"]


def test_fail_all_fails_every_waiting_future_and_duplicates_are_refused() -> None:
    async def scenario() -> None:
        pending = PendingReplies(on_abandon=lambda rid: None)
        futures = [pending.add(f"r{i}", math.inf) for i in range(3)]
        with pytest.raises(ValueError, match="already queued"):
            pending.add("r0", math.inf)
        assert pending.fail_all(ConnectionError("gone")) == 3
        for future in futures:
            with pytest.raises(ConnectionError):
                await future

    asyncio.run(scenario())


# -- batch forming ---------------------------------------------------------------------------------
def test_collect_batch_stops_at_max_items() -> None:
    source = iter(range(100))

    def read(count: int, timeout: float) -> list[int]:
        return [next(source) for _ in range(min(count, 3))]

    assert collect_batch(read, [-1], 8, 10.0, threading.Event()) == [-1, *range(7)]


def test_collect_batch_stops_after_max_wait_since_the_first_item() -> None:
    calls: list[float] = []

    def read(count: int, timeout: float) -> list[int]:
        calls.append(timeout)
        time.sleep(min(timeout, 0.01))
        return []

    started = time.monotonic()
    batch = collect_batch(read, [1, 2], 8, 0.05, threading.Event())
    assert batch == [1, 2]
    assert 0.04 <= time.monotonic() - started < 1.0
    assert all(t <= 0.05 for t in calls)  # never blocks past the window


def test_collect_batch_returns_what_it_has_when_stopped_and_nothing_for_nothing() -> None:
    stop = threading.Event()
    stop.set()
    assert collect_batch(lambda c, t: [99], [1], 8, 10.0, stop) == [1]
    assert collect_batch(lambda c, t: [99], [], 8, 10.0, threading.Event()) == []


# -- failure isolation -----------------------------------------------------------------------------
def test_oom_splits_the_batch_in_halves_until_it_fits() -> None:
    sizes: list[int] = []
    emptied: list[int] = []

    def compute(items):
        sizes.append(len(items))
        if len(items) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return [x * 10 for x in items]

    out = run_isolating_failures(compute, list(range(7)), on_oom=lambda: emptied.append(1))
    assert out == [x * 10 for x in range(7)]
    assert sizes[0] == 7  # the whole batch is tried first
    assert max(s for s in sizes if s <= 2) == 2  # halves stop at the largest size that fits
    assert len(emptied) == sum(1 for s in sizes if s > 2)  # the cache is emptied after every OOM


def test_oom_on_a_single_item_fails_only_that_item() -> None:
    def compute(items):
        if 3 in items:
            raise torch.cuda.OutOfMemoryError("simulated")
        return list(items)

    out = run_isolating_failures(compute, [1, 2, 3, 4])
    assert out[:2] == [1, 2] and out[3] == 4
    assert isinstance(out[2], ItemFailure) and out[2].kind == "oom"


def test_a_poison_item_is_isolated_by_bisection() -> None:
    def compute(items):
        if "poison" in items:
            raise ValueError("cannot handle this one")
        return [s.upper() for s in items]

    out = run_isolating_failures(compute, ["a", "poison", "c"])
    assert out[0] == "A" and out[2] == "C"
    assert isinstance(out[1], ItemFailure) and out[1].kind == "internal"
    assert "cannot handle this one" in out[1].message


@pytest.mark.parametrize(
    ("landmarks", "status"),
    [
        ([[1.0, 2.0]], None),  # pairs of an older worker
        ([[1.0, 2.0, 1.5]], None),  # confidence out of range
        ([[1.0, None, 0.5]], None),
        ([[True, 2.0, 0.5]], None),
        ("68 points", None),
        ([[1.0, 2.0, 0.5]] * 2000, None),  # far more points than any model has
        (None, ["passed"]),
        (None, "excellent"),
    ],
)
def test_malformed_landmark_fields_of_a_reply_are_codec_errors(landmarks: object, status: object) -> None:
    """Replies are read back from Redis: a bad landmark field is refused here, not turned into a 500 later."""
    good = encode_result(JobResult(request_id="r", ok=True, sr_rgb=image(0)))
    head_len = int.from_bytes(good[:4], "big")
    header = json.loads(good[4 : 4 + head_len])
    header["landmarks"], header["landmark_status"] = landmarks, status
    head = json.dumps(header).encode()
    frame = len(head).to_bytes(4, "big") + head + good[4 + head_len :]
    with pytest.raises(CodecError):
        decode_result(frame)


def _reframe(frame: bytes, **changes: object) -> bytes:
    """A reply frame with some header fields changed and the blobs kept."""
    head_len = int.from_bytes(frame[:4], "big")
    header = {**json.loads(frame[4 : 4 + head_len]), **changes}
    head = json.dumps(header).encode()
    return len(head).to_bytes(4, "big") + head + frame[4 + head_len :]


@pytest.mark.parametrize(
    "changes",
    [
        {"steps": 3},  # claims more step images than the frame carries
        {"has_sr": False, "steps": None},  # one blob too many
        {"error_kind": "exploded"},
    ],
)
def test_reply_frames_whose_header_disagrees_with_their_content_are_refused(changes: dict) -> None:
    frame = encode_result(JobResult(request_id="r", ok=True, sr_rgb=image(1), step_rgb=[image(2)]))
    with pytest.raises(CodecError):
        decode_result(_reframe(frame, **changes))


@pytest.mark.parametrize("field", ["dl", "enq"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), "soon", True])
def test_job_times_must_be_finite_numbers(field: str, value: object) -> None:
    fields = encode_job(_job(), "api")
    meta = json.loads(fields["meta"])
    meta[field] = value
    fields["meta"] = json.dumps(
        meta
    ).encode()  # json.dumps writes NaN and Infinity, as a foreign producer may
    with pytest.raises(CodecError, match=r"number|time"):
        decode_job(fields)

"""The worker loop itself: warm-up before readiness, failure isolation, OOM splitting, draining on stop."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
import uuid
from collections import deque

import numpy as np
import pytest
import redis
import torch
from prometheus_client import REGISTRY

from facesr.model.config import DICConfig
from facesr.model.inference import FaceSR
from facesr.service import metrics
from facesr.service.queue import Job, JobOptions, JobResult
from facesr.service.queue.keys import GROUP, Keys
from facesr.service.queue.redis_backend import RedisQueue
from facesr.service.queue.redis_source import RedisJobSource
from facesr.service.queue.source import Delivery, WorkerInfo
from facesr.service.worker.loop import Worker
from tests.service.conftest import queue_settings, worker_settings

MODEL = "tiny"


@pytest.fixture(scope="module")
def engine() -> FaceSR:
    return FaceSR.from_config(DICConfig.tiny(), name=MODEL)


class WrappedEngine:
    """Delegates to a real engine, recording batch sizes; subclasses inject failures in ``check``."""

    def __init__(self, inner: FaceSR, events: list | None = None) -> None:
        self.inner = inner
        self.card, self.model_id = inner.card, inner.model_id
        self.device, self.dtype, self.config = inner.device, inner.dtype, inner.config
        self.events = events if events is not None else []
        self.armed = False  # failures are injected only after warm-up

    def check(self, lr: np.ndarray) -> None:
        """Raise to simulate a failure for this batch."""

    def enhance_tensor(self, lr: np.ndarray, *, return_steps: bool = False):
        self.events.append(("compute", len(lr)))
        if self.armed:
            self.check(lr)
        return self.inner.enhance_tensor(lr, return_steps=return_steps)


class OomAbove(WrappedEngine):
    """Runs out of "GPU memory" for batches larger than ``limit`` (testable on the CPU)."""

    limit = 2

    def check(self, lr: np.ndarray) -> None:
        if len(lr) > self.limit:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (simulated at batch size {len(lr)})")


class ChokesOnWhite(WrappedEngine):
    """Fails any batch that contains an all-white face."""

    def check(self, lr: np.ndarray) -> None:
        if (lr.reshape(len(lr), -1) == 255).all(axis=1).any():
            raise RuntimeError("cannot process a blank face")


class RecordingSource:
    """A JobSource that hands out prepared batches and records what the worker does with them."""

    def __init__(self, events: list, batches: list[list[Delivery]] | None = None) -> None:
        self.events = events
        self.batches = deque(batches or [])
        self.finished: list[tuple[Delivery, JobResult]] = []

    def open(self, worker_id: str, models) -> None:
        self.events.append(("open", worker_id))

    def next_batch(self, max_items: int, max_wait_s: float, stop: threading.Event) -> list[Delivery]:
        if self.batches:
            return self.batches.popleft()
        stop.wait(0.01)
        return []

    def cancelled(self, deliveries) -> set[str]:
        return set()

    def finish(self, answered) -> None:
        self.finished.extend(answered)

    def release(self, deliveries) -> None:
        self.events.append(("release", len(deliveries)))

    def maintain(self) -> None:
        pass

    def heartbeat(self, info: WorkerInfo, ttl_s: float) -> None:
        self.events.append(("heartbeat", info.ready))

    def keep_alive(self, deliveries) -> None:
        if deliveries:
            self.events.append(("keep_alive", len(deliveries)))

    def withdraw(self) -> None:
        self.events.append(("withdraw", None))

    def close(self, info: WorkerInfo | None = None) -> None:
        self.events.append(("close", None))


def face(colour: int) -> np.ndarray:
    ramp = np.add.outer(np.arange(16), np.arange(16)) * 6
    return ((np.stack([ramp, ramp.T, np.full((16, 16), colour)], -1) + colour) % 256).astype(np.uint8)


def deliveries(faces: list[np.ndarray]) -> list[Delivery]:
    now = time.time()
    return [
        Delivery(i, f"r{i}", Job(f"r{i}", MODEL, f, JobOptions(), now, now + 30)) for i, f in enumerate(faces)
    ]


def metric(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def image_of(result: JobResult) -> np.ndarray:
    return result.sr_rgb.astype(int)


def test_heartbeat_reports_ready_only_after_every_batch_size_is_warmed(engine: FaceSR) -> None:
    events: list = []
    source = RecordingSource(events)
    worker = Worker(
        {MODEL: WrappedEngine(engine, events)},
        source,
        worker_settings(max_batch_size=3, heartbeat_interval_s=0.05),
    )
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while ("heartbeat", True) not in events and time.monotonic() < deadline:
        time.sleep(0.01)
    worker.stop()
    thread.join(10)
    assert not thread.is_alive()
    first_ready = events.index(("heartbeat", True))
    warmed = [size for kind, size in events[:first_ready] if kind == "compute"]
    assert sorted(warmed) == [1, 2, 3]
    assert ("heartbeat", False) in events[:first_ready]  # alive but not ready while warming
    assert events[-1] == ("close", None)
    assert metric("facesr_worker_ready") == 0  # cleared on exit


class HangsWhenArmed(WrappedEngine):
    """A model call that does not return until ``release`` is set (a hung kernel, a deadlocked driver)."""

    def __init__(self, inner: FaceSR, events: list) -> None:
        super().__init__(inner, events)
        self.release = threading.Event()

    def check(self, lr: np.ndarray) -> None:
        self.release.wait(timeout=30)


def wait_for(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_a_stalled_batch_withdraws_the_worker_until_it_finishes(engine: FaceSR) -> None:
    events: list = []
    source = RecordingSource(events)
    hanging = HangsWhenArmed(engine, events)
    worker = Worker(
        {MODEL: hanging},
        source,
        worker_settings(max_batch_size=1, heartbeat_interval_s=0.05, batch_timeout_s=0.3),
    )
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        wait_for(worker.is_ready, 30)
        hanging.armed = True
        source.batches.append(deliveries([face(1)]))
        wait_for(lambda: ("withdraw", None) in events)
        withdrawn = events.index(("withdraw", None))
        assert ("keep_alive", 1) in events[:withdrawn]  # refreshed while within the limit
        assert not worker.is_ready() and metric("facesr_worker_ready") == 0
        time.sleep(0.3)  # six heartbeat periods: the stalled worker neither beats nor keeps its job
        assert not [e for e in events[withdrawn + 1 :] if e[0] in ("heartbeat", "keep_alive")]
        assert events.count(("withdraw", None)) == 1  # logged and withdrawn once, not every beat

        hanging.release.set()  # the call returns after all: answered, and ready again
        wait_for(lambda: len(source.finished) == 1)
        wait_for(worker.is_ready)
        wait_for(lambda: ("heartbeat", True) in events[withdrawn:])
        assert source.finished[0][1].ok
    finally:
        hanging.release.set()
        worker.stop()
        thread.join(10)
    assert not thread.is_alive()


def test_oom_splits_the_batch_and_every_item_still_gets_its_face(engine: FaceSR) -> None:
    events: list = []
    oom = OomAbove(engine, events)
    faces = [face(c) for c in (0, 50, 100, 150, 200)]
    source = RecordingSource(events)
    worker = Worker({MODEL: oom}, source, worker_settings(max_batch_size=5))
    splits_before = metric("facesr_oom_splits_total")
    model_phases_before = metric("facesr_compute_seconds_count", {"phase": "model"})
    oom.armed = True
    worker.process(deliveries(faces))

    results = [r for _, r in source.finished]
    assert [r.request_id for r in results] == [f"r{i}" for i in range(5)]
    direct = engine.enhance_tensor(np.stack(faces))
    for result, expected in zip(results, direct, strict=True):
        assert result.ok, result.error_message
        assert np.abs(image_of(result) - expected.image).max() <= 1
        assert result.timings["batch_size"] == 5.0
    sizes = [n for kind, n in events if kind == "compute"]
    assert sizes == [5, 2, 3, 1, 2]  # halves until each part fits: 5 -> 2 + 3 -> 2 + (1 + 2)
    assert metric("facesr_oom_splits_total") - splits_before == 2
    assert metric("facesr_compute_seconds_count", {"phase": "model"}) - model_phases_before == 1


def test_oom_during_warmup_lowers_the_batch_size(engine: FaceSR) -> None:
    oom = OomAbove(engine)
    oom.armed = True
    worker = Worker({MODEL: oom}, RecordingSource([]), worker_settings(max_batch_size=4))
    worker.warm_up()
    assert worker.max_batch_size == OomAbove.limit


def test_one_failing_item_is_isolated_and_a_wrongly_sized_input_never_reaches_the_model(
    engine: FaceSR,
) -> None:
    events: list = []
    choking = ChokesOnWhite(engine, events)
    choking.armed = True
    source = RecordingSource(events)
    worker = Worker({MODEL: choking}, source, worker_settings(max_batch_size=4))
    batch = deliveries([face(10), np.full((16, 16, 3), 255, np.uint8), face(70)])
    now = time.time()
    batch.append(
        Delivery(99, "short", Job("short", MODEL, np.ones((4, 4, 3), np.uint8), JobOptions(), now, now + 30))
    )
    batch.append(Delivery(98, None, None, "api-x", error="job entry has no 'meta' field"))
    worker.process(batch)

    results = {d.handle: r for d, r in source.finished}
    assert len(results) == 5  # every delivery is answered (and acknowledged)
    assert results[0].ok and results[2].ok
    assert results[1].error_kind == "internal" and "blank face" in results[1].error_message
    assert results[99].error_kind == "bad_input" and "16 x 16 x 3" in results[99].error_message
    assert results[98].error_kind == "bad_input" and "meta" in results[98].error_message
    assert max(n for kind, n in events if kind == "compute") == 3  # the short input was never computed


class NanLandmarksOnWhite(WrappedEngine):
    """Returns NaN landmarks for all-white faces (as an fp16 overflow would), real results otherwise."""

    def enhance_tensor(self, lr: np.ndarray, *, return_steps: bool = False):
        outputs = super().enhance_tensor(lr, return_steps=return_steps)
        white = (lr.reshape(len(lr), -1) == 255).all(axis=1)
        return [
            dataclasses.replace(out, landmarks=np.full_like(out.landmarks, np.nan)) if blank else out
            for out, blank in zip(outputs, white, strict=True)
        ]


def test_non_finite_landmarks_fail_only_their_own_item(engine: FaceSR) -> None:
    source = RecordingSource([])
    worker = Worker({MODEL: NanLandmarksOnWhite(engine)}, source, worker_settings(max_batch_size=4))
    worker.process(deliveries([face(10), np.full((16, 16, 3), 255, np.uint8), face(70)]))

    results = {d.handle: r for d, r in source.finished}
    assert results[0].ok and results[2].ok
    assert all(np.isfinite(r.landmarks).all() for r in (results[0], results[2]))
    assert not results[1].ok and results[1].error_kind == "internal"
    assert "non-finite" in (results[1].error_message or "")


class ShrunkenStepsOnWhite(WrappedEngine):
    """Returns step images of the wrong size for all-white faces, real results otherwise."""

    def enhance_tensor(self, lr: np.ndarray, *, return_steps: bool = False):
        outputs = super().enhance_tensor(lr, return_steps=return_steps)
        white = (lr.reshape(len(lr), -1) == 255).all(axis=1)
        return [
            dataclasses.replace(out, steps=[step[:64, :64] for step in out.steps]) if blank else out
            for out, blank in zip(outputs, white, strict=True)
        ]


def test_output_images_of_the_wrong_size_fail_only_their_own_item(engine: FaceSR) -> None:
    source = RecordingSource([])
    worker = Worker({MODEL: ShrunkenStepsOnWhite(engine)}, source, worker_settings(max_batch_size=4))
    batch = deliveries([face(10), np.full((16, 16, 3), 255, np.uint8), face(70)])
    worker.process([replace_options(d, return_steps=True) for d in batch])

    results = {d.handle: r for d, r in source.finished}
    assert results[0].ok and results[2].ok and results[0].step_rgb is not None
    assert not results[1].ok and results[1].error_kind == "internal"
    assert "64" in (results[1].error_message or "")


def replace_options(delivery: Delivery, **options: bool) -> Delivery:
    assert delivery.job is not None
    job = dataclasses.replace(delivery.job, options=dataclasses.replace(delivery.job.options, **options))
    return dataclasses.replace(delivery, job=job)


@pytest.mark.redis
def test_stop_finishes_and_acknowledges_the_batch_in_hand(redis_url: str, engine: FaceSR) -> None:
    """What SIGTERM does: stop reading, finish the current batch, acknowledge it, return."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    keys = Keys(prefix)
    gate, entered = threading.Event(), threading.Event()

    class Gated(WrappedEngine):
        def check(self, lr: np.ndarray) -> None:
            entered.set()
            assert gate.wait(20)

    gated = Gated(engine)
    worker = Worker(
        {MODEL: gated},
        RedisJobSource(
            queue_settings(redis_url, prefix=prefix, max_batch_size=2), events=metrics.PrometheusQueueEvents()
        ),
        worker_settings(
            max_batch_size=2, max_wait_ms=300, warmup="pow2", heartbeat_interval_s=0.2, heartbeat_ttl_s=2.0
        ),
    )
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()

    async def scenario() -> list[JobResult]:
        queue = RedisQueue(queue_settings(redis_url, prefix=prefix), events=metrics.PrometheusQueueEvents())
        await queue.start()
        try:
            while not worker.is_ready():
                await asyncio.sleep(0.02)
            gated.armed = True
            now = time.time()
            jobs = [Job(f"r{i}", MODEL, face(i * 40), JobOptions(), now, now + 60) for i in range(5)]
            in_hand = await asyncio.gather(*[queue.submit(j) for j in jobs[:2]])
            await asyncio.to_thread(entered.wait, 10)
            for j in jobs[2:]:
                await queue.submit(j)
            worker.stop()  # the SIGTERM handler does exactly this
            await asyncio.sleep(0.2)
            gate.set()
            await asyncio.to_thread(thread.join, 20)
            return list(await asyncio.gather(*in_hand))
        finally:
            gate.set()
            await queue.close()

    results = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert not thread.is_alive()
    assert all(r.ok for r in results) and [r.timings["batch_size"] for r in results] == [2.0, 2.0]
    with redis.Redis.from_url(redis_url) as client:
        assert client.xpending(keys.jobs(MODEL), GROUP)["pending"] == 0  # acknowledged
        assert client.xlen(keys.jobs(MODEL)) == 3  # the rest was never taken
        assert client.get(keys.heartbeat(worker.worker_id)) is None  # heartbeat withdrawn

"""The embedded backend (no Redis) keeps the queue contract: admission, batching, deadlines, cancellation."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from prometheus_client import REGISTRY

from facesr.model.config import DICConfig
from facesr.model.inference import FaceSR
from facesr.service.queue import BackendUnavailable, Job, JobOptions, JobResult, QueueFull
from facesr.service.queue.memory_backend import InProcessQueue
from facesr.service.worker.loop import Worker
from tests.service.conftest import queue_settings, worker_settings

MODEL = "tiny"


@pytest.fixture(scope="module")
def engine() -> FaceSR:
    return FaceSR.from_config(DICConfig.tiny(), name=MODEL)


class GatedEngine:
    """Delegates to a real engine; after ``close()`` every call waits in the model until ``open()``."""

    def __init__(self, inner: FaceSR) -> None:
        self.inner = inner
        self.card, self.model_id, self.device, self.dtype = (
            inner.card,
            inner.model_id,
            inner.device,
            inner.dtype,
        )
        self.config = inner.config
        self._open = threading.Event()
        self._open.set()
        self.entered = threading.Event()

    def close(self) -> None:
        self._open.clear()
        self.entered.clear()

    def open(self) -> None:
        self._open.set()

    def enhance_tensor(self, lr: np.ndarray, *, return_steps: bool = False):
        self.entered.set()
        assert self._open.wait(20), "test gate never opened"
        return self.inner.enhance_tensor(lr, return_steps=return_steps)


def face(colour: int) -> np.ndarray:
    ramp = np.add.outer(np.arange(16), np.arange(16)) * 6
    return ((np.stack([ramp, ramp.T[::-1], np.full((16, 16), colour)], -1) + colour) % 256).astype(np.uint8)


def job(rid: str, colour: int = 0, *, deadline_s: float = 30.0, model: str = MODEL) -> Job:
    now = time.time()
    return Job(rid, model, face(colour), JobOptions(), now, now + deadline_s)


def metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


async def started_queue(engines: dict, max_queue: int = 64, **options) -> InProcessQueue:
    settings = worker_settings(**options)
    queue = InProcessQueue(
        queue_settings(max_queue=max_queue), lambda source: Worker(engines, source, settings)
    )
    await queue.start()
    for _ in range(1000):
        if (await queue.status()).ready_workers == 1:
            return queue
        await asyncio.sleep(0.02)
    raise AssertionError("the in-process worker never became ready")


def run(coro, timeout: float = 60.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def test_results_are_correct_batched_and_reach_their_callers(engine: FaceSR) -> None:
    colours = [0, 90, 180, 45]

    async def scenario() -> list[JobResult]:
        queue = await started_queue({MODEL: engine}, max_batch_size=4, max_wait_ms=300)
        try:
            status = await queue.status()
            assert status.models[MODEL]["model_id"] == engine.model_id
            futures = await asyncio.gather(*[queue.submit(job(f"r{i}", c)) for i, c in enumerate(colours)])
            return list(await asyncio.gather(*futures))
        finally:
            await queue.close()

    results = run(scenario())
    direct = engine.enhance_tensor(np.stack([face(c) for c in colours]))
    for i, (result, expected) in enumerate(zip(results, direct, strict=True)):
        assert result.ok and result.request_id == f"r{i}"
        image = result.sr_rgb.astype(int)
        assert np.abs(image - expected.image).max() <= 1
        assert min(np.abs(image - d.image).mean() for j, d in enumerate(direct) if j != i) > 2
    assert max(r.timings["batch_size"] for r in results) > 1


def test_admission_counts_jobs_in_progress_and_refuses_when_full(engine: FaceSR) -> None:
    gated = GatedEngine(engine)

    async def scenario() -> list[JobResult]:
        queue = await started_queue({MODEL: gated}, max_queue=3, max_batch_size=2, max_wait_ms=0)
        try:
            gated.close()
            futures = [await queue.submit(job("r0"))]
            await asyncio.to_thread(gated.entered.wait, 10)  # r0 is being computed
            futures += [await queue.submit(job(f"r{i}")) for i in (1, 2)]
            with pytest.raises(QueueFull) as refused:
                await queue.submit(job("r3"))
            assert refused.value.depth == 3 and refused.value.retry_after_s > 0
            assert (await queue.status()).depth == 3
            gated.open()
            return list(await asyncio.gather(*futures))
        finally:
            gated.open()
            await queue.close()

    assert all(r.ok for r in run(scenario()))


def test_cancelled_and_expired_jobs_are_answered_at_once_and_skipped_by_the_worker(engine: FaceSR) -> None:
    gated = GatedEngine(engine)
    cancelled_before, expired_before = metric("facesr_cancelled_total"), metric("facesr_expired_total")

    async def scenario() -> dict[str, JobResult]:
        queue = await started_queue({MODEL: gated}, max_batch_size=1, max_wait_ms=0)
        try:
            gated.close()
            blocker = await queue.submit(job("blocker"))
            await asyncio.to_thread(gated.entered.wait, 10)
            gone = await queue.submit(job("gone"))
            late = await queue.submit(job("late", deadline_s=0.2))
            kept = await queue.submit(job("kept"))
            gone.cancel()  # the caller went away: cancelling its future is the one cancel API
            results = {"late": await late}  # answered while the model is busy
            gated.open()
            results["blocker"], results["kept"] = await blocker, await kept
            return results
        finally:
            gated.open()
            await queue.close()

    results = run(scenario())
    assert results["late"].error_kind == "expired"
    assert results["blocker"].ok and results["kept"].ok
    assert metric("facesr_cancelled_total") - cancelled_before == 1
    assert metric("facesr_expired_total") - expired_before == 1


def test_unknown_models_are_refused_by_the_worker_and_past_deadlines_answered_at_once(
    engine: FaceSR,
) -> None:
    async def scenario() -> tuple[JobResult, JobResult]:
        queue = await started_queue({MODEL: engine}, max_batch_size=1)
        try:
            unknown = await (await queue.submit(job("u", model="other")))
            past = await (await queue.submit(job("p", deadline_s=-1)))
            assert (await queue.status()).depth == 0
            return unknown, past
        finally:
            await queue.close()

    unknown, past = run(scenario())
    assert unknown.error_kind == "bad_input" and "other" in unknown.error_message
    assert past.error_kind == "expired"


def test_close_drains_the_batch_in_hand_and_releases_everyone_else(engine: FaceSR) -> None:
    gated = GatedEngine(engine)

    async def scenario() -> None:
        queue = await started_queue({MODEL: gated}, max_batch_size=1, max_wait_ms=0)
        gated.close()
        in_hand = await queue.submit(job("in-hand"))
        await asyncio.to_thread(gated.entered.wait, 10)
        waiting = await queue.submit(job("waiting"))
        closing = asyncio.create_task(queue.close())
        await asyncio.sleep(0.1)
        gated.open()
        await closing
        assert (await in_hand).ok  # finished, not dropped
        with pytest.raises(BackendUnavailable):
            await waiting
        with pytest.raises(BackendUnavailable):
            await queue.submit(job("after"))
        assert not (await queue.status()).reachable

    run(scenario())

"""Several runners in one worker: batches computed side by side, one readiness, one identity.

The worker runs on a thread with the in-process job source and the real tiny model; a barrier inside
the engine proves that two batches are in the model at the same time.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY

from facesr.model.config import DICConfig
from facesr.model.inference import FaceSR
from facesr.service.queue import Job, JobOptions, JobResult
from facesr.service.queue.memory_backend import MemoryJobSource
from facesr.service.worker.loop import Worker
from tests.service.conftest import worker_settings

MODEL = "tiny"


@pytest.fixture(scope="module")
def engine() -> FaceSR:
    return FaceSR.from_config(DICConfig.tiny(num_steps=2), name=MODEL)


class DelegatingEngine:
    """What the worker reads of an engine, taken from a real one; subclasses change ``enhance_tensor``."""

    def __init__(self, inner: FaceSR) -> None:
        self.inner = inner
        self.card, self.model_id = inner.card, inner.model_id
        self.device, self.dtype, self.config = inner.device, inner.dtype, inner.config

    def enhance_tensor(self, lr: np.ndarray, *, return_steps: bool = False) -> list[Any]:
        return self.inner.enhance_tensor(lr, return_steps=return_steps)


class MeetingEngine(DelegatingEngine):
    """Delegates to a real engine; once ``armed``, every call waits at a two-party barrier first, so a
    call returns only while another one is in the model too (or fails after a timeout)."""

    def __init__(self, inner: FaceSR) -> None:
        super().__init__(inner)
        self.armed = False
        self.barrier = threading.Barrier(2, timeout=20)
        self.threads: set[str] = set()
        self.warmed_on: set[str] = set()

    def enhance_tensor(self, lr: np.ndarray, *, return_steps: bool = False) -> list[Any]:
        name = threading.current_thread().name
        if self.armed:
            self.threads.add(name)
            self.barrier.wait()
        else:
            self.warmed_on.add(name)
        return self.inner.enhance_tensor(lr, return_steps=return_steps)


def make_job(colour: int) -> Job:
    now = time.time()
    lr = np.full((16, 16, 3), colour, np.uint8)
    return Job(uuid.uuid4().hex, MODEL, lr, JobOptions(landmarks=True), now, now + 60)


def run_worker(worker: Worker) -> threading.Thread:
    thread = threading.Thread(target=worker.run, name="test-worker", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not worker.is_ready():
        assert thread.is_alive(), "the worker stopped before it was ready"
        assert time.monotonic() < deadline, "the worker did not become ready"
        time.sleep(0.01)
    return thread


def test_two_runners_compute_two_batches_at_once_and_answer_each_job(engine: FaceSR):
    results: list[JobResult] = []
    source = MemoryJobSource(16, results.append)
    meeting = MeetingEngine(engine)
    worker = Worker(
        {MODEL: meeting}, source, worker_settings(runners=2, threads_per_runner=1, max_batch_size=1)
    )
    thread = run_worker(worker)
    try:
        assert meeting.warmed_on == {"facesr-runner-0", "facesr-runner-1"}  # readiness waited for both
        meeting.armed = True
        jobs = [make_job(colour) for colour in (40, 200)]
        for job in jobs:
            source.put(job, lambda depth: 1.0)
        deadline = time.monotonic() + 30
        while len(results) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        worker.stop()
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert sorted(r.request_id for r in results) == sorted(j.request_id for j in jobs)
    assert all(r.ok and r.sr_rgb is not None and r.sr_rgb.shape == (128, 128, 3) for r in results)
    assert meeting.threads == {"facesr-runner-0", "facesr-runner-1"}  # both ran, and met in the model
    means = sorted(float(r.sr_rgb.mean()) for r in results if r.sr_rgb is not None)
    assert means[1] - means[0] > 50  # each caller got its own face back


def test_the_heartbeat_and_metrics_describe_the_layout(engine: FaceSR):
    source = MemoryJobSource(16, lambda result: None)
    worker = Worker(
        {MODEL: engine}, source, worker_settings(runners=2, threads_per_runner=1, max_batch_size=3)
    )
    thread = run_worker(worker)
    try:
        info = worker.info()
    finally:
        worker.stop()
        thread.join(timeout=30)
    assert (info.runners, info.max_batch_size) == (2, 3)
    layout = info.models[MODEL]["runner_layout"]
    assert layout == {
        "device": "cpu",
        "runners": 2,
        "threads_per_runner": 1,
        "max_batch_size": 3,
        "chosen_by": "settings",
        "measured_faces_per_second": None,
    }
    labels = {"device": "cpu", "runners": "2", "threads_per_runner": "1", "max_batch_size": "3"}
    assert REGISTRY.get_sample_value("facesr_runner_layout", {**labels, "chosen_by": "settings"}) == 1.0
    assert REGISTRY.get_sample_value("facesr_runners") == 2.0


def test_an_automatic_layout_is_measured_before_readiness(engine: FaceSR):
    source = MemoryJobSource(16, lambda result: None)
    settings = worker_settings(
        runners=None, threads_per_runner=None, max_batch_size=None, layout_trial_s=0.05
    )
    worker = Worker({MODEL: engine}, source, settings)
    thread = run_worker(worker)
    try:
        layout = worker.layout
    finally:
        worker.stop()
        thread.join(timeout=30)
    assert layout is not None and layout.chosen_by == "measured"
    assert layout.runners * layout.threads_per_runner >= 1
    assert layout.trials and max(t.faces_per_second for t in layout.trials) > 0
    assert worker.max_batch_size == layout.max_batch_size


class FailsAtWarmUp(DelegatingEngine):
    """An engine whose every call fails (a broken model)."""

    def enhance_tensor(self, lr: np.ndarray, *, return_steps: bool = False) -> list[Any]:
        raise RuntimeError("the model is broken")


def test_a_runner_that_fails_stops_the_worker_with_its_error(engine: FaceSR):
    source = MemoryJobSource(16, lambda result: None)
    worker = Worker(
        {MODEL: FailsAtWarmUp(engine)},
        source,
        worker_settings(runners=2, threads_per_runner=1, max_batch_size=1),
    )
    with pytest.raises(RuntimeError, match="the model is broken"):
        worker.run()
    assert not worker.is_ready()


class HeldEngine(DelegatingEngine):
    """Delegates to a real engine; once ``armed``, the first call waits until ``gate`` is set."""

    def __init__(self, inner: FaceSR) -> None:
        super().__init__(inner)
        self.armed = False
        self.gate = threading.Event()
        self.entered = threading.Event()

    def enhance_tensor(self, lr: np.ndarray, *, return_steps: bool = False) -> list[Any]:
        if self.armed and not self.entered.is_set():
            self.entered.set()
            self.gate.wait(timeout=30)
        return self.inner.enhance_tensor(lr, return_steps=return_steps)


def test_while_one_runner_is_stalled_the_others_take_no_new_jobs(engine: FaceSR):
    """A stalled worker has withdrawn its heartbeat, so other workers may take its jobs; its idle runners
    must not take more meanwhile (they would be computed twice)."""
    results: list[JobResult] = []
    source = MemoryJobSource(16, results.append)
    held = HeldEngine(engine)
    settings = worker_settings(
        runners=2, threads_per_runner=1, max_batch_size=1, heartbeat_interval_s=0.05, batch_timeout_s=0.3
    )
    worker = Worker({MODEL: held}, source, settings)
    thread = run_worker(worker)
    try:
        held.armed = True
        source.put(make_job(10), lambda depth: 1.0)
        assert held.entered.wait(10)
        deadline = time.monotonic() + 10
        while worker.is_ready() and time.monotonic() < deadline:  # the watchdog notices the stall
            time.sleep(0.02)
        assert not worker.is_ready()
        for colour in (100, 150, 200):
            source.put(make_job(colour), lambda depth: 1.0)
        time.sleep(0.8)  # an idle runner would have answered all three by now
        # The idle runner may already have been waiting for a job when the stall began: it takes at most
        # that one batch, then no more until the stall is over.
        assert len(results) <= 1
        assert source.depth() >= 3  # the stalled batch, and at least two waiting
        held.gate.set()
        deadline = time.monotonic() + 30
        while len(results) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(results) == 4 and all(r.ok for r in results)
        # The stall is over. On a loaded machine a later batch may itself run past the 0.3 s limit; its
        # runner reports ready again right after delivering, so allow it a moment.
        deadline = time.monotonic() + 10
        while not worker.is_ready() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert worker.is_ready()
    finally:
        held.gate.set()
        worker.stop()
        thread.join(timeout=30)

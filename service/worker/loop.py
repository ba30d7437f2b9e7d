"""The GPU worker: forms batches from a job source, runs the model, answers every job.

The loop (B = ``max_batch_size``, W = ``max_wait_ms``)::

    choose the runner layout (runners, threads per runner, B; measured on CPU, see `layout.py`)
    on each runner thread: warm up every batch size it will use; once all have, advertise ready
    each runner repeats until stopped:
        take a batch: block <= 1 s for the first job, then collect until B jobs or W ms after the first
        answer cancelled, expired and malformed jobs without computing them (counted)
        run the model on the rest; a failing item is isolated and answered alone; CUDA OOM splits the batch
        send the replies, then acknowledge the entries
        every so often: take over jobs of dead workers, dead-letter jobs that keep killing workers

SIGTERM (or :meth:`Worker.stop`) stops reading; the batch in hand is finished and acknowledged before
``run`` returns. A lost queue backend is retried with jittered exponential backoff, never a crash.

Stall watchdog: a batch running longer than ``batch_timeout_s`` (a model call that never returns) makes the
heartbeat thread log an error, report the worker not ready and withdraw its heartbeat, and stop refreshing
its in-flight jobs, so other workers take them over. Its other runners take no new batch while it lasts
(one that was already waiting for a job when the stall began finishes that one batch). Should the batch
finish after all, the worker answers it (a second answer is dropped as late by the API) and reports ready
again.

Runners share the engines (inference only reads the weights) and the job source (both sources are safe
to read from several threads), and answer their batches independently. Counters, throughput and the
stall watchdog cover all of them; the worker is one consumer with one heartbeat.

Operators start it as ``facesr worker`` (see `process.py`); the embedded server runs the same class on
threads of the API process.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from facesr.model.runtime import bucket_sizes
from facesr.service import metrics
from facesr.service.queue.backoff import Backoff
from facesr.service.queue.base import BackendUnavailable
from facesr.service.queue.jobs import ErrorKind, Job, JobResult
from facesr.service.queue.source import Delivery, JobSource, WorkerInfo
from facesr.service.worker.engine import Engine, describe_engine, dtype_label, engine_landmark_quality
from facesr.service.worker.isolation import ItemFailure, run_isolating_failures
from facesr.service.worker.layout import RunnerLayout, choose_layout
from facesr.service.worker.settings import WarmupMode, WorkerSettings

log = logging.getLogger(__name__)


class InvalidOutputError(ValueError):
    """The model's output for one face cannot be sent: non-finite values, or images of the wrong size."""


def warmup_sizes(max_batch_size: int, mode: WarmupMode) -> list[int]:
    """Batch sizes to run once before serving: every size up to B, or powers of two plus B."""
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    if mode == "all":
        return list(range(1, max_batch_size + 1))
    if mode == "pow2":
        return bucket_sizes(max_batch_size)
    raise ValueError(f"warmup mode must be 'all' or 'pow2', got {mode!r}")


def make_worker_id() -> str:
    """Unique per process, readable in XINFO CONSUMERS: host, pid and a random suffix."""
    host = socket.gethostname().split(".")[0][:40] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


def _output_image(image: Any, side: int) -> np.ndarray:
    """One output image as a contiguous ``side x side x 3`` uint8 array; anything else fails the face."""
    array = np.asarray(image)
    if array.shape != (side, side, 3) or array.dtype != np.uint8:
        raise InvalidOutputError(
            f"the model returned an image of {array.shape} {array.dtype}, expected {side} x {side} x 3 uint8"
        )
    return np.ascontiguousarray(array)


class Worker:
    """Consumes jobs from ``source`` and answers them with ``engines`` (model name -> engine).

    Construct with its settings object; ``run()`` blocks until :meth:`stop` (or SIGTERM/SIGINT when run on
    the main thread). The same class serves the Redis backend and the in-process backend.
    """

    def __init__(
        self,
        engines: Mapping[str, Engine],
        source: JobSource,
        settings: WorkerSettings,
        *,
        worker_id: str | None = None,
    ) -> None:
        if not engines:
            raise ValueError("a worker needs at least one engine")
        self.engines = dict(engines)
        self.source = source
        self.settings = settings
        self.layout: RunnerLayout | None = None  # chosen at warm-up
        self.max_batch_size = settings.max_batch_size or 1  # the layout's, once chosen
        self.max_wait_s = settings.max_wait_ms / 1000.0
        self.warmup_batch_sizes: list[int] = []
        self.heartbeat_interval_s = settings.heartbeat_interval_s
        self.heartbeat_ttl_s = settings.heartbeat_ttl_s
        self.maintenance_interval_s = settings.maintenance_interval_s
        self.batch_timeout_s = settings.batch_timeout_s
        self.worker_id = worker_id or make_worker_id()
        self._stop = threading.Event()
        self._ready = False
        self._lock = threading.Lock()
        self._in_flight: dict[int, tuple[float, list[Delivery]]] = {}  # runner -> (monotonic start, batch)
        self._warmed_runners = 0
        self._runner_errors: list[BaseException] = []
        self._stalled = False  # set by the heartbeat thread while a batch overruns batch_timeout_s
        self._throughput = 0.0
        self._batches = 0
        self._inferences = 0
        self._started_at = time.time()

    # -- control -------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to finish its current batch and return (thread- and signal-safe)."""
        self._stop.set()

    @property
    def runners(self) -> int:
        """Model runners of the chosen layout (0 before it is chosen)."""
        return self.layout.runners if self.layout is not None else 0

    @property
    def throughput(self) -> float:
        """Faces per second of model time of all runners together, from a moving average over recent
        batches (0 before any)."""
        return self._throughput * max(1, self.runners)

    def is_ready(self) -> bool:
        """True once every batch size is warmed and until the loop stops, except while a batch is stalled."""
        return self._ready and not self._stop.is_set() and not self._stalled

    def info(self) -> WorkerInfo:
        """The heartbeat payload."""
        layout = {"runner_layout": self.layout.as_dict()} if self.layout is not None else {}
        return WorkerInfo(
            worker_id=self.worker_id,
            ready=self.is_ready(),
            models={name: {**describe_engine(engine), **layout} for name, engine in self.engines.items()},
            max_batch_size=self.max_batch_size,
            runners=max(1, self.runners),
            throughput=round(self.throughput, 3),
            batches=self._batches,
            inferences=self._inferences,
            started_at=self._started_at,
            host=socket.gethostname(),
            pid=os.getpid(),
        )

    def run(self) -> None:
        """Warm up, then serve until stopped. Returns after the last batch is answered and acknowledged."""
        with self._signals_stop_the_loop():
            self.source.open(self.worker_id, list(self.engines))
            heartbeat = threading.Thread(target=self._heartbeat_loop, name="facesr-heartbeat", daemon=True)
            heartbeat.start()
            try:
                self.plan_layout()
                if not self._stop.is_set():
                    self._run_runners()
            finally:
                self._set_ready(False)
                self._stop.set()
                heartbeat.join(timeout=self.heartbeat_interval_s + 1.0)
                try:
                    self.source.close(self.info())
                except BackendUnavailable as exc:
                    log.warning("could not withdraw the heartbeat on exit: %s", exc)
                log.info("worker %s stopped after %d batches", self.worker_id, self._batches)

    def plan_layout(self) -> RunnerLayout:
        """Choose the runner layout once: fixed settings, the device's rule, or a measurement on CPU
        (each candidate runs the first engine for ``layout_trial_s``)."""
        if self.layout is not None:
            return self.layout
        engine = next(iter(self.engines.values()))
        side = engine.config.lr_size

        def run_batch(size: int) -> None:
            engine.enhance_tensor(np.zeros((size, side, side, 3), np.uint8))

        started = time.perf_counter()
        layout = choose_layout(
            self.settings.layout_request(),
            str(engine.device),
            run_batch,
            torch.set_num_threads,
            trial_s=self.settings.layout_trial_s,
            stop=self._stop,
        )
        self.layout = layout
        self.max_batch_size = layout.max_batch_size
        self.warmup_batch_sizes = warmup_sizes(layout.max_batch_size, self.settings.warmup)
        metrics.publish_layout(layout)
        log.info(
            "runner layout on %s: %d runner(s) x %d thread(s), batches up to %d (%s in %.1f s)%s",
            layout.device,
            layout.runners,
            layout.threads_per_runner,
            layout.max_batch_size,
            layout.chosen_by,
            time.perf_counter() - started,
            "".join(
                f"; {t.runners}x{t.threads_per_runner} b{t.batch_size}: {t.faces_per_second:.1f}/s"
                for t in layout.trials
            ),
        )
        return layout

    def _run_runners(self) -> None:
        """Start a thread per runner and wait for all of them; a runner's crash stops the others and is
        raised here."""
        layout = self.plan_layout()
        threads = [
            threading.Thread(target=self._runner, args=(index,), name=f"facesr-runner-{index}", daemon=True)
            for index in range(layout.runners)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():  # short joins keep the calling (main) thread responsive to signals
                thread.join(timeout=0.2)
        if self._runner_errors:
            raise self._runner_errors[0]

    def _runner(self, index: int) -> None:
        layout = self.plan_layout()
        try:
            if layout.threads_per_runner:
                torch.set_num_threads(layout.threads_per_runner)
            self.warm_up()
            with self._lock:
                self._warmed_runners += 1
                everyone_warm = self._warmed_runners == layout.runners
            if everyone_warm and not self._stop.is_set():
                self._set_ready(True)
                self._send_heartbeat()
            self._serve(index)
        except BaseException as error:
            self._runner_errors.append(error)
            self.stop()

    def warm_up(self) -> None:
        """Run every batch size once per engine (kernel selection, allocator pools) on the calling thread.

        Chooses the layout first if that has not happened. A size that runs out of GPU memory here lowers
        ``max_batch_size`` to the largest size that ran, so the worker does not pay for an out-of-memory
        split on every full batch.
        """
        self.plan_layout()
        for name, engine in self.engines.items():
            for size in list(self.warmup_batch_sizes):
                if self._stop.is_set():
                    return
                started = time.perf_counter()
                try:
                    side = engine.config.lr_size
                    engine.enhance_tensor(np.zeros((size, side, side, 3), np.uint8))
                except torch.cuda.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    with self._lock:  # runners warm up side by side
                        fitted = [s for s in self.warmup_batch_sizes if s < size]
                        if not fitted:
                            raise
                        log.warning(
                            "%s: batch size %d does not fit in GPU memory; lowering max_batch_size "
                            "from %d to %d",
                            name,
                            size,
                            self.max_batch_size,
                            fitted[-1],
                        )
                        self.max_batch_size = fitted[-1]
                        self.warmup_batch_sizes = fitted
                    break
                elapsed = time.perf_counter() - started
                self._throughput = max(self._throughput, size / max(elapsed, 1e-6))
            metrics.MODEL_INFO.labels(
                model=name,
                model_id=engine.model_id,
                dtype=dtype_label(engine.dtype),
                device=str(engine.device),
            ).set(1)
            log.info("warmed %s on %s at batch sizes %s", name, engine.device, self.warmup_batch_sizes)

    # -- the loop ------------------------------------------------------------------------------------
    def _serve(self, runner: int = 0) -> None:
        backoff = Backoff()
        next_maintenance = 0.0
        while not self._stop.is_set():
            if self._stalled:
                # The heartbeat is withdrawn and keep-alives have stopped, so other workers may take any
                # job this worker holds; taking more (or reclaiming the stalled batch) would compute twice.
                self._stop.wait(0.1)
                continue
            try:
                if runner == 0 and time.monotonic() >= next_maintenance:  # one runner does housekeeping
                    self.source.maintain()
                    next_maintenance = time.monotonic() + self.maintenance_interval_s
                batch = self.source.next_batch(self.max_batch_size, self.max_wait_s, self._stop)
                if batch:
                    self.process(batch, runner)
                backoff.reset()
            except BackendUnavailable as exc:
                delay = backoff.next()
                log.warning("queue backend unavailable (%s); retrying in %.2f s", exc, delay)
                self._stop.wait(delay)

    def process(self, batch: Sequence[Delivery], runner: int = 0) -> None:
        """Answer every delivery of ``batch`` (all of one model) and acknowledge them (on ``runner``)."""
        with self._lock:
            self._in_flight[runner] = (time.monotonic(), list(batch))
        try:
            answered = self._answer(batch)
            started = time.perf_counter()
            self.source.finish(answered)
            metrics.COMPUTE_SECONDS.labels(phase="reply").observe(time.perf_counter() - started)
        finally:
            with self._lock:
                self._in_flight.pop(runner, None)
            self.source.release(batch)

    def _answer(self, batch: Sequence[Delivery]) -> list[tuple[Delivery, JobResult]]:
        batch_started = time.time()
        cancelled = self.source.cancelled([d for d in batch if d.job is not None])
        answered: list[tuple[Delivery, JobResult]] = []
        runnable: list[Delivery] = []
        for delivery in batch:
            refusal = self._refusal(delivery, cancelled, batch_started)
            if refusal is None:
                runnable.append(delivery)
            else:
                answered.append((delivery, refusal))
        if runnable:
            try:
                answered.extend(self._compute(runnable, batch_started))
            except Exception as exc:  # a bug here must not kill the loop: every caller still gets an answer
                log.exception("unexpected failure while computing a batch")
                answered.extend(
                    (d, self._failure(d, "internal", f"worker error: {type(exc).__name__}: {exc}"))
                    for d in runnable
                )
        return answered

    def _refusal(self, delivery: Delivery, cancelled: set[str], now: float) -> JobResult | None:
        """An error result when ``delivery`` must not be computed, else None."""
        job = delivery.job
        if job is None:
            metrics.ITEM_ERRORS.labels(kind="bad_input").inc()
            return self._failure(delivery, "bad_input", delivery.error or "malformed job")
        if job.is_expired(now):  # checked first: the API also marks expired jobs cancelled
            metrics.EXPIRED.inc()
            expired = job.expired_result("before the job ran", now)
            return self._failure(delivery, "expired", expired.error_message or "deadline passed")
        if job.request_id in cancelled:
            metrics.CANCELLED.inc()
            return self._failure(delivery, "cancelled", "the caller went away before the job ran")
        if job.model not in self.engines:
            metrics.ITEM_ERRORS.labels(kind="bad_input").inc()
            return self._failure(
                delivery,
                "bad_input",
                f"model {job.model!r} is not served here ({sorted(self.engines)})",
            )
        side = self.engines[job.model].config.lr_size
        if job.lr_rgb.shape != (side, side, 3) or job.lr_rgb.dtype != np.uint8:
            metrics.ITEM_ERRORS.labels(kind="bad_input").inc()
            return self._failure(
                delivery,
                "bad_input",
                f"input must be {side} x {side} x 3 uint8 RGB, got {job.lr_rgb.shape} {job.lr_rgb.dtype}",
            )
        return None

    def _compute(
        self, runnable: Sequence[Delivery], batch_started: float
    ) -> list[tuple[Delivery, JobResult]]:
        jobs = [d.job for d in runnable if d.job is not None]
        engine = self.engines[jobs[0].model]
        if any(job.model != jobs[0].model for job in jobs):
            raise RuntimeError("a batch mixed models; the job source must not do that")

        started = time.perf_counter()
        lr = np.stack([job.lr_rgb for job in jobs])
        return_steps = any(job.options.return_steps for job in jobs)
        prepared = time.perf_counter()

        def compute(indices: Sequence[int]) -> list[Any]:
            return engine.enhance_tensor(lr[list(indices)], return_steps=return_steps)

        outputs = run_isolating_failures(compute, range(len(jobs)), on_oom=self._on_oom)
        computed = time.perf_counter()
        timings_base = {"compute": computed - prepared, "batch_size": float(len(jobs))}
        answered = []
        for delivery, job, output in zip(runnable, jobs, outputs, strict=True):
            timings = {"queue": max(0.0, batch_started - job.enqueued_at), **timings_base}
            if isinstance(output, ItemFailure):
                metrics.ITEM_ERRORS.labels(kind=output.kind).inc()
                answered.append((delivery, self._failure(delivery, output.kind, output.message, timings)))
                continue
            try:
                answered.append((delivery, self._success(job, output, engine, timings)))
            except InvalidOutputError as exc:  # this item alone; its neighbours in the batch are fine
                metrics.ITEM_ERRORS.labels(kind="internal").inc()
                answered.append((delivery, self._failure(delivery, "internal", str(exc), timings)))
        packaged = time.perf_counter()

        metrics.COMPUTE_SECONDS.labels(phase="prepare").observe(prepared - started)
        metrics.COMPUTE_SECONDS.labels(phase="model").observe(computed - prepared)
        metrics.COMPUTE_SECONDS.labels(phase="package").observe(packaged - computed)
        for job in jobs:
            metrics.QUEUE_WAIT.observe(max(0.0, batch_started - job.enqueued_at))
        metrics.BATCH_SIZE.observe(len(jobs))
        metrics.BATCHES.inc()
        metrics.INFERENCES.inc(len(jobs))
        metrics.observe_gpu_memory(engine.device)
        rate = len(jobs) / max(computed - prepared, 1e-6)
        with self._lock:
            self._batches += 1
            self._inferences += len(jobs)
            self._throughput = rate if self._throughput == 0 else 0.8 * self._throughput + 0.2 * rate
        return answered

    def _success(self, job: Job, output: Any, engine: Engine, timings: dict[str, float]) -> JobResult:
        side = engine.config.hr_size
        image = _output_image(output.image, side)
        steps = None
        if job.options.return_steps and output.steps is not None:
            steps = [_output_image(step, side) for step in output.steps]
        landmarks = None
        quality = engine_landmark_quality(engine)
        status = quality.status if quality is not None else None
        if job.options.landmarks and output.landmarks is not None and not (quality and quality.withheld):
            points = np.asarray(output.landmarks, dtype=np.float64)
            scores = np.asarray(output.confidence, dtype=np.float64)
            if not (np.isfinite(points).all() and np.isfinite(scores).all()):
                # NaN/inf (e.g. an fp16 overflow) cannot be sent as JSON and would turn into a 500 later.
                raise InvalidOutputError("the model produced non-finite landmarks for this face")
            landmarks = np.column_stack([points.round(3), np.clip(scores, 0.0, 1.0).round(4)]).tolist()
        return JobResult(
            request_id=job.request_id,
            ok=True,
            sr_rgb=image,
            step_rgb=steps,
            landmarks=landmarks,
            landmark_status=status if job.options.landmarks else None,
            model_id=engine.model_id,
            worker_id=self.worker_id,
            timings=timings,
        )

    def _failure(
        self, delivery: Delivery, kind: ErrorKind, message: str, timings: dict[str, float] | None = None
    ) -> JobResult:
        return JobResult.failure(
            delivery.request_id or "", kind, message, worker_id=self.worker_id, timings=timings
        )

    def _on_oom(self) -> None:
        metrics.OOM_SPLITS.inc()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # -- heartbeat -----------------------------------------------------------------------------------
    def _set_ready(self, ready: bool) -> None:
        self._ready = ready
        metrics.WORKER_READY.set(1 if ready else 0)

    def _watch_for_stall(self) -> bool:
        """True while a batch in flight has run longer than ``batch_timeout_s``; acts on each change."""
        with self._lock:
            now = time.monotonic()
            running_s = max((now - started for started, _ in self._in_flight.values()), default=0.0)
            size = sum(len(batch) for _, batch in self._in_flight.values())
        stalled = running_s > self.batch_timeout_s
        if stalled and not self._stalled:
            self._stalled = True
            metrics.WORKER_READY.set(0)
            log.error(
                "STALLED: a batch of %d job(s) has run for %.1f s (FACESR_BATCH_TIMEOUT_S=%g); reporting "
                "not ready and withdrawing the heartbeat so other workers take its jobs over. The model "
                "call may be hung: restart this worker",
                size,
                running_s,
                self.batch_timeout_s,
            )
            self.source.withdraw()
        elif not stalled and self._stalled:
            self._stalled = False
            metrics.WORKER_READY.set(1 if self.is_ready() else 0)
            log.warning("the stalled batch finished; worker %s reports ready again", self.worker_id)
        return stalled

    def _send_heartbeat(self) -> None:
        try:
            if self._watch_for_stall():
                return  # no heartbeat, no keep-alive: its jobs become claimable
            self.source.heartbeat(self.info(), self.heartbeat_ttl_s)
            with self._lock:
                in_flight = [delivery for _, batch in self._in_flight.values() for delivery in batch]
            self.source.keep_alive(in_flight)
        except BackendUnavailable as exc:
            log.debug("heartbeat not sent: %s", exc)
        except Exception:  # the heartbeat thread must outlive any surprise, or readiness silently lapses
            log.exception("heartbeat failed")

    def _heartbeat_loop(self) -> None:
        while not self._stop.is_set():
            self._send_heartbeat()
            self._stop.wait(self.heartbeat_interval_s)

    @contextmanager
    def _signals_stop_the_loop(self) -> Iterator[None]:
        """On the main thread, SIGTERM and SIGINT call :meth:`stop` for the duration of ``run``."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handle(signum: int, _frame: object) -> None:
            log.info("received %s: finishing the current batch, then exiting", signal.Signals(signum).name)
            self.stop()

        previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

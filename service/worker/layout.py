"""How a worker spreads the model over its device: runners, intra-op threads per runner, batch size.

A *runner* is a thread of the worker process that takes batches from the job source and runs the model
on them; PyTorch releases the GIL inside its kernels, so runners on different cores compute at the same
time. What is fastest depends on the device:

- **CPU**: a small model's feature maps fit in a core's cache only at small batches, and an OpenMP pool
  spread over several cores costs more than it gains at these sizes, so one single-thread runner per
  core at batch 1-2 usually wins. The layout is *measured* at warm-up: each candidate runs for a short
  while with all its runners busy, and the one with the most faces per second is kept.
- **CUDA**: one runner (one stream of kernels) with large batches; nothing is measured, and a batch size
  that does not fit in memory is lowered at warm-up by the worker.

Every choice can be fixed by a setting (``FACESR_RUNNERS``, ``FACESR_THREADS_PER_RUNNER``,
``FACESR_MAX_BATCH_SIZE``); whatever is fixed is not measured.

This module does not import torch (the API process reads its settings); the worker passes in how to run
a batch and how to set a thread's intra-op thread count.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

ChosenBy = Literal["settings", "measured", "device"]

CPU_BATCH_CANDIDATES = (1, 2, 4, 8)
CUDA_DEFAULT_BATCH = 64  # the warm-up lowers it when it does not fit in GPU memory
# Long enough for a few calls even at batch 8 on a slow core: shorter trials picked a batch that longer
# measurements showed to be slower (noise on a shared machine).
DEFAULT_TRIAL_S = 1.0
NEAR_BEST = 0.05  # a candidate this close to the fastest counts as fast as it (measurement noise)


CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def usable_cores() -> int:
    """CPU cores this process may use: its affinity mask (taskset, cpusets) or, when lower, its cgroup v2
    CPU quota rounded up (``docker run --cpus``, Kubernetes CPU limits)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota(CGROUP_CPU_MAX)
    return max(1, min(cores, quota) if quota else cores)


def cgroup_cpu_quota(path: Path) -> int | None:
    """``quota period`` of a cgroup v2 ``cpu.max`` file as whole CPUs (rounded up); None without a limit."""
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return max(1, math.ceil(int(quota) / int(period)))
    except (ValueError, ZeroDivisionError):
        return None


@dataclass(frozen=True)
class LayoutRequest:
    """What the settings fix; None = choose for the device."""

    runners: int | None = None
    threads_per_runner: int | None = None
    max_batch_size: int | None = None

    def __post_init__(self) -> None:
        for name in ("runners", "threads_per_runner", "max_batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 (or auto), got {value}")

    @property
    def fixed(self) -> bool:
        return None not in (self.runners, self.threads_per_runner, self.max_batch_size)


@dataclass(frozen=True)
class LayoutTrial:
    """One candidate measured at warm-up: faces per second with all its runners busy."""

    runners: int
    threads_per_runner: int
    batch_size: int
    faces_per_second: float


@dataclass(frozen=True)
class RunnerLayout:
    """The layout a worker serves with, and how it was chosen (``trials``: the measurements, if any).

    ``threads_per_runner`` 0 leaves the intra-op thread count at PyTorch's default (on CUDA the host
    threads only launch kernels).
    """

    device: str
    runners: int
    threads_per_runner: int
    max_batch_size: int
    chosen_by: ChosenBy
    trials: tuple[LayoutTrial, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """JSON-able, as advertised in heartbeats and ``/v1/models``."""
        best = max((t.faces_per_second for t in self.trials), default=None)
        return {
            "device": self.device,
            "runners": self.runners,
            "threads_per_runner": self.threads_per_runner,
            "max_batch_size": self.max_batch_size,
            "chosen_by": self.chosen_by,
            "measured_faces_per_second": None if best is None else round(best, 2),
        }

    def trial_table(self) -> list[dict[str, Any]]:
        return [asdict(trial) for trial in self.trials]


def cpu_candidates(request: LayoutRequest, cores: int) -> list[tuple[int, int, int]]:
    """(runners, threads per runner, batch size) to measure on a CPU with ``cores`` cores.

    Runner and thread counts that use every core (cores x 1, 1 x cores, and the even splits between),
    batch sizes 1, 2, 4, 8 up to ``max_batch_size``; fixed settings narrow the list.
    """
    splits = [(cores // threads, threads) for threads in range(1, cores + 1) if cores % threads == 0]
    if request.runners is not None and request.threads_per_runner is not None:
        splits = [(request.runners, request.threads_per_runner)]
    elif request.runners is not None:
        splits = [(request.runners, max(1, cores // request.runners))]
    elif request.threads_per_runner is not None:
        splits = [(max(1, cores // request.threads_per_runner), request.threads_per_runner)]
    if request.max_batch_size is not None:
        batches = [request.max_batch_size]
    else:
        batches = list(CPU_BATCH_CANDIDATES)
    return [(runners, threads, batch) for runners, threads in splits for batch in batches]


RunBatch = Callable[[int], None]  # runs the model once on that many faces
SetThreads = Callable[[int], None]  # sets the calling thread's intra-op thread count


def measure_trial(
    run_batch: RunBatch, set_threads: SetThreads, runners: int, threads: int, batch_size: int, trial_s: float
) -> LayoutTrial:
    """Run ``runners`` threads with ``threads`` intra-op threads each, all calling ``run_batch`` at
    ``batch_size`` for about ``trial_s`` seconds after one untimed call each; faces/s of all together."""
    faces = [0] * runners
    errors: list[BaseException] = []
    stop_at = [0.0]
    began = [0.0]

    def open_window() -> None:  # run by the barrier before any party is released
        began[0] = time.perf_counter()
        stop_at[0] = began[0] + trial_s

    start = threading.Barrier(runners + 1, action=open_window)

    def runner(index: int) -> None:
        try:
            set_threads(threads)
            run_batch(batch_size)  # untimed: per-thread initialisation, allocator pools
        except BaseException as error:  # reported on the calling thread
            errors.append(error)
        start.wait()
        if errors:
            return
        calls = 0
        while calls < 1 or time.perf_counter() < stop_at[0]:
            try:
                run_batch(batch_size)
            except BaseException as error:
                errors.append(error)
                return
            calls += 1
        faces[index] = calls * batch_size

    threads_started = [
        threading.Thread(target=runner, args=(i,), name=f"facesr-layout-trial-{i}", daemon=True)
        for i in range(runners)
    ]
    for thread in threads_started:
        thread.start()
    start.wait()
    for thread in threads_started:
        thread.join()
    elapsed = time.perf_counter() - began[0]
    if errors:
        raise errors[0]
    return LayoutTrial(runners, threads, batch_size, sum(faces) / max(elapsed, 1e-9))


def choose_layout(
    request: LayoutRequest,
    device: str,
    run_batch: RunBatch,
    set_threads: SetThreads,
    *,
    cores: int | None = None,
    trial_s: float = DEFAULT_TRIAL_S,
    stop: threading.Event | None = None,
) -> RunnerLayout:
    """The layout for ``device`` ("cpu", "cuda:0", ...): as fixed by ``request``, else by the device's
    rule or a measurement. A set ``stop`` ends the measurement between candidates (the best so far is
    kept; a worker that is stopping does not serve with it anyway).

    ``run_batch(n)`` runs the model once on ``n`` faces; it is called from several threads at once,
    each of which first calls ``set_threads`` with the candidate's thread count. Trials run on threads
    of their own, so the calling thread's settings are left as they were.
    """
    if not device.startswith("cpu"):
        return RunnerLayout(
            device=device,
            runners=request.runners or 1,
            threads_per_runner=request.threads_per_runner or 0,
            max_batch_size=request.max_batch_size or CUDA_DEFAULT_BATCH,
            chosen_by="settings" if request.fixed else "device",
        )
    if request.fixed:
        assert request.runners and request.threads_per_runner and request.max_batch_size
        return RunnerLayout(
            device, request.runners, request.threads_per_runner, request.max_batch_size, "settings"
        )
    trials: list[LayoutTrial] = []
    for runners, threads, batch in cpu_candidates(request, cores or usable_cores()):
        if stop is not None and stop.is_set() and trials:
            break
        split = (runners, threads)
        split_best = max(
            (t.faces_per_second for t in trials if (t.runners, t.threads_per_runner) == split), default=0.0
        )
        if split_best and trials[-1].faces_per_second < split_best:
            continue  # a smaller batch already did better on this split; larger ones only cost more
        trials.append(measure_trial(run_batch, set_threads, runners, threads, batch, trial_s))
    return layout_from_trials(device, trials)


def layout_from_trials(device: str, trials: Sequence[LayoutTrial]) -> RunnerLayout:
    """The candidate with the smallest batch among those within ``NEAR_BEST`` of the most faces per second
    (a larger batch costs every request in it latency, so it has to buy clearly more throughput)."""
    if not trials:
        raise ValueError("no layout was measured")
    fastest = max(t.faces_per_second for t in trials)
    near = [t for t in trials if t.faces_per_second >= (1 - NEAR_BEST) * fastest]
    best = min(near, key=lambda t: (t.batch_size, -t.faces_per_second))
    return RunnerLayout(
        device, best.runners, best.threads_per_runner, best.batch_size, "measured", tuple(trials)
    )

"""The runner layout: candidates, the measurement at warm-up, fixed settings and the device rules.

The measured tests use a model stand-in that sleeps (releasing the GIL, as torch kernels do) for a time
that depends on the batch size and on the calling thread's intra-op thread count, so the right answer
is known.
"""

from __future__ import annotations

import threading
import time

import pytest

from facesr.service.worker.layout import (
    CUDA_DEFAULT_BATCH,
    LayoutRequest,
    LayoutTrial,
    RunnerLayout,
    cgroup_cpu_quota,
    choose_layout,
    cpu_candidates,
    layout_from_trials,
    measure_trial,
)


class SleepingModel:
    """``cost(n) = 4 ms + 1 ms x n^2`` per call with one thread (best at batch 2: 250 faces/s per runner,
    against 200 at batches 1 and 4); twice as slow with more intra-op threads (a pool that costs more than
    it gives, as on small CPUs)."""

    def __init__(self) -> None:
        self.local = threading.local()
        self.calls: list[tuple[int, int]] = []  # (threads, batch size)
        self.lock = threading.Lock()

    def set_threads(self, threads: int) -> None:
        self.local.threads = threads

    def run_batch(self, size: int) -> None:
        threads = getattr(self.local, "threads", 1)
        with self.lock:
            self.calls.append((threads, size))
        time.sleep((0.004 + 0.001 * size**2) * (2.0 if threads > 1 else 1.0))


def test_cpu_candidates_split_every_core_and_narrow_to_what_is_fixed():
    assert cpu_candidates(LayoutRequest(), 2) == [
        (2, 1, 1), (2, 1, 2), (2, 1, 4), (2, 1, 8), (1, 2, 1), (1, 2, 2), (1, 2, 4), (1, 2, 8),
    ]  # fmt: skip
    assert {(r, t) for r, t, _ in cpu_candidates(LayoutRequest(), 4)} == {(4, 1), (2, 2), (1, 4)}
    assert cpu_candidates(LayoutRequest(runners=3), 6) == [(3, 2, b) for b in (1, 2, 4, 8)]
    assert cpu_candidates(LayoutRequest(threads_per_runner=2, max_batch_size=5), 4) == [(2, 2, 5)]


def test_a_trial_runs_every_runner_at_once_and_counts_their_faces():
    model = SleepingModel()
    trial = measure_trial(model.run_batch, model.set_threads, 2, 1, 2, 0.1)
    one = measure_trial(model.run_batch, model.set_threads, 1, 1, 2, 0.1)

    assert (trial.runners, trial.threads_per_runner, trial.batch_size) == (2, 1, 2)
    assert 1.6 < trial.faces_per_second / one.faces_per_second < 2.4  # two runners side by side
    assert 150 < one.faces_per_second < 260  # 2 faces per 8 ms


def test_the_measurement_keeps_the_fastest_layout_and_stops_growing_a_losing_batch():
    model = SleepingModel()

    layout = choose_layout(LayoutRequest(), "cpu", model.run_batch, model.set_threads, cores=2, trial_s=0.12)

    assert (layout.runners, layout.threads_per_runner, layout.max_batch_size) == (2, 1, 2)
    assert layout.chosen_by == "measured"
    tried = {(t.runners, t.threads_per_runner, t.batch_size) for t in layout.trials}
    assert (2, 1, 4) in tried and (2, 1, 8) not in tried  # batch 4 lost to 2, so 8 was not tried
    assert {threads for threads, _ in model.calls} == {1, 2}  # both splits ran with their thread counts
    assert layout.as_dict()["measured_faces_per_second"] == pytest.approx(
        max(t.faces_per_second for t in layout.trials), abs=0.01
    )


def test_fixed_settings_and_other_devices_measure_nothing():
    model = SleepingModel()

    fixed = choose_layout(LayoutRequest(3, 1, 2), "cpu", model.run_batch, model.set_threads)
    cuda = choose_layout(LayoutRequest(), "cuda:0", model.run_batch, model.set_threads)
    cuda_fixed = choose_layout(LayoutRequest(max_batch_size=16), "cuda", model.run_batch, model.set_threads)

    assert model.calls == []
    assert (fixed.runners, fixed.threads_per_runner, fixed.max_batch_size, fixed.chosen_by) == (
        3,
        1,
        2,
        "settings",
    )
    assert (cuda.runners, cuda.max_batch_size, cuda.chosen_by) == (1, CUDA_DEFAULT_BATCH, "device")
    assert cuda.threads_per_runner == 0  # PyTorch's default host threads
    assert cuda_fixed.max_batch_size == 16


def test_a_larger_batch_must_be_clearly_faster_and_no_trials_is_an_error():
    trials = [LayoutTrial(2, 1, 4, 100.0), LayoutTrial(2, 1, 1, 96.0), LayoutTrial(1, 2, 1, 50.0)]
    assert layout_from_trials("cpu", trials).max_batch_size == 1  # 4% faster does not pay for the latency
    trials[1] = LayoutTrial(2, 1, 1, 90.0)
    assert layout_from_trials("cpu", trials).max_batch_size == 4  # 11% faster does
    with pytest.raises(ValueError, match="no layout"):
        layout_from_trials("cpu", [])
    with pytest.raises(ValueError, match="runners"):
        LayoutRequest(runners=0)


def test_a_failing_model_fails_the_measurement():
    def broken(size: int) -> None:
        raise RuntimeError("no kernel")

    with pytest.raises(RuntimeError, match="no kernel"):
        choose_layout(LayoutRequest(), "cpu", broken, lambda threads: None, cores=2, trial_s=0.01)


def test_the_layout_is_json_for_heartbeats():
    layout = RunnerLayout("cpu", 2, 1, 2, "measured", (LayoutTrial(2, 1, 2, 12.345),))
    assert layout.as_dict() == {
        "device": "cpu",
        "runners": 2,
        "threads_per_runner": 1,
        "max_batch_size": 2,
        "chosen_by": "measured",
        "measured_faces_per_second": 12.35,
    }


def test_a_cgroup_cpu_quota_counts_as_whole_cores(tmp_path):
    cpu_max = tmp_path / "cpu.max"
    for text, cores in (
        ("max 100000", None),
        ("150000 100000", 2),
        ("200000 100000\n", 2),
        ("nonsense", None),
    ):
        cpu_max.write_text(text)
        assert cgroup_cpu_quota(cpu_max) == cores
    assert cgroup_cpu_quota(tmp_path / "missing") is None


def test_a_stop_ends_the_measurement_after_the_first_candidate():
    model = SleepingModel()
    stop = threading.Event()
    stop.set()
    layout = choose_layout(
        LayoutRequest(), "cpu", model.run_batch, model.set_threads, cores=2, trial_s=0.05, stop=stop
    )
    assert len(layout.trials) == 1

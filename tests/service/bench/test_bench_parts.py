"""The benchmark's parts: latency summaries, window agreement, the worker counters, the README splice."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from facesr.service.bench import counters, load, report


def test_summaries_count_only_answers_as_throughput_and_measure_from_when_a_request_was_due():
    samples = [load.Sample(0.0, 0.1 * (i + 1), 200) for i in range(10)]
    samples += [load.Sample(0.0, 0.5, 429), load.Sample(0.0, 0.2, 503), load.Sample(1.0, 1.5, 0)]

    summary = load.summarize(samples, 2.0)

    assert summary["req_per_s"] == 5.0  # ten 200s in two seconds
    assert (summary["rejected"], summary["errors"], summary["requests"]) == (1, 2, 13)
    assert summary["p50_ms"] == pytest.approx(550.0)
    assert summary["p99_ms"] == pytest.approx(991.0)
    assert summary["rejected_p50_ms"] == 500.0
    assert summary["statuses"] == {"200": 10, "429": 1, "503": 1, "0": 1}
    assert load.summarize([], 1.0)["p99_ms"] is None


def test_windows_agree_only_when_the_last_three_are_within_ten_percent():
    def windows(*counts: int) -> load.Windows:
        result = load.Windows()
        for count in counts:
            result.add([load.Sample(0, 0, 200)] * count, 1.0)
        return result

    assert windows(5, 100, 100, 105).agree()
    assert not windows(100, 100, 112).agree()
    assert not windows(100, 100).agree()  # fewer than three
    assert not windows(0, 0, 0).agree()
    late = load.Windows()
    late.add([load.Sample(0, 0, 200)] * 10, 2.0)  # a window that overran its sleep counts its real length
    assert late.rate(0) == 5.0


def exposition(inferences: float, batches: float, model_seconds: float) -> str:
    registry = CollectorRegistry()
    Counter("facesr_inferences", "", registry=registry).inc(inferences)
    Counter("facesr_batches", "", registry=registry).inc(batches)
    phases = Histogram("facesr_compute_seconds", "", ["phase"], registry=registry)
    phases.labels(phase="model").observe(model_seconds)
    Histogram("facesr_queue_wait_seconds", "", registry=registry).observe(0.002)
    return generate_latest(registry).decode()


def test_counter_differences_give_the_mean_batch_and_phase_times():
    before = counters.parse(exposition(10, 10, 1.0))
    after = counters.parse(exposition(40, 20, 3.0))

    seen = counters.difference(before, after)

    assert seen["mean_batch"] == 3.0  # 30 faces in 10 batches
    assert seen["phase_ms"]["model"] == 200.0  # 2 s over 10 batches
    assert seen["phase_ms"]["queue_wait"] is None  # one observation each: no new waits in between
    assert counters.difference(counters.Counters(ok=False), after)["mean_batch"] is None


def test_the_readme_section_is_replaced_between_its_markers_only():
    document = f"intro\n{report.README_BEGIN}\nold table\n{report.README_END}\noutro\n"

    updated = report.splice_section(document, "| new |")

    assert updated == f"intro\n{report.README_BEGIN}\n| new |\n{report.README_END}\noutro\n"
    with pytest.raises(ValueError, match="no"):
        report.splice_section("no markers here", "| new |")


def test_tables_show_missing_values_and_booleans_readably():
    row = {"a": None, "b": True, "c": 0.01234, "d": 12.345, "e": 0.1264, "f": 1.757}
    text = report.table([row], ("a", "b", "c", "d", "e", "f"))
    assert text.splitlines()[-1] == "| - | yes | 0.0123 | 12.3 | 0.126 | 1.76 |"  # 1.76 is not shown as 1.8

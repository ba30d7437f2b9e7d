"""Metric names, buckets, multiprocess aggregation and the worker's own scrape endpoint."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from facesr.service import metrics

REPO_ROOT = Path(__file__).resolve().parents[3]

# serving design, section 4 (names as Prometheus reports families: counters without "_total")
API_FAMILIES = {
    "facesr_http_requests": "counter",
    "facesr_request_duration_seconds": "histogram",
    "facesr_rejected": "counter",
    "facesr_request_failures": "counter",
    "facesr_inflight_requests": "gauge",
    "facesr_queue_depth": "gauge",
}
WORKER_FAMILIES = {
    "facesr_queue_wait_seconds": "histogram",
    "facesr_batch_size": "histogram",
    "facesr_batches": "counter",
    "facesr_inferences": "counter",
    "facesr_compute_seconds": "histogram",
    "facesr_redelivered": "counter",
    "facesr_dead_lettered": "counter",
    "facesr_expired": "counter",
    "facesr_gpu_memory_bytes": "gauge",
    "facesr_worker_ready": "gauge",
    "facesr_model_info": "gauge",
}


def families(text: str) -> dict[str, str]:
    return {family.name: family.type for family in text_string_to_metric_families(text)}


def test_every_designed_metric_is_exposed_with_its_type() -> None:
    metrics.HTTP_REQUESTS.labels(route="/v1/super-resolve", code="200")  # labelled families need one child
    metrics.REQUEST_DURATION.labels(route="/v1/super-resolve")
    metrics.REJECTED.labels(reason="queue_full")
    metrics.REQUEST_FAILURES.labels(reason="deadline")
    metrics.COMPUTE_SECONDS.labels(phase="model")
    metrics.GPU_MEMORY.labels(kind="allocated")
    metrics.MODEL_INFO.labels(model="m", model_id="m-1", dtype="float32", device="cpu")
    body, content_type = metrics.render_latest()
    assert content_type.startswith("text/plain")
    exposed = families(body.decode())
    for name, kind in {**API_FAMILIES, **WORKER_FAMILIES}.items():
        assert exposed.get(name) == kind, f"{name}: expected a {kind}, found {exposed.get(name)}"


def test_batch_size_buckets_are_powers_of_two() -> None:
    metrics.BATCH_SIZE.observe(3)
    text = metrics.render_latest()[0].decode()
    bounds = [
        sample.labels["le"]
        for family in text_string_to_metric_families(text)
        if family.name == "facesr_batch_size"
        for sample in family.samples
        if sample.name == "facesr_batch_size_bucket"
    ]
    assert bounds[:5] == ["1.0", "2.0", "4.0", "8.0", "16.0"] and bounds[-1] == "+Inf"


_CHILD = textwrap.dedent(
    """
    import os, sys
    from facesr.service import metrics
    metrics.INFERENCES.inc(int(sys.argv[1]))
    metrics.INFLIGHT_REQUESTS.inc(int(sys.argv[2]))
    metrics.QUEUE_DEPTH.set(int(sys.argv[3]))
    print(os.getpid())
    """
)
_RENDER = textwrap.dedent(
    """
    import sys
    from facesr.service import metrics
    for pid in sys.argv[1:]:
        metrics.mark_process_dead(int(pid))
    sys.stdout.write(metrics.render_latest()[0].decode())
    """
)


def _run_python(code: str, env: dict[str, str], *args: object) -> subprocess.CompletedProcess[str]:
    """``python -c code args`` in a fresh interpreter with ``env``; fails the test on a non-zero exit."""
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def _python(code: str, env: dict[str, str], *args: object) -> str:
    return _run_python(code, env, *args).stdout


def _value(text: str, name: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise AssertionError(f"{name} not in the exposition")


def test_multiprocess_mode_aggregates_every_process(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    first = _python(_CHILD, env, 3, 2, 7).strip()
    _python(_CHILD, env, 4, 1, 5)
    text = _python(_RENDER, env)
    assert _value(text, "facesr_inferences_total") == 7  # counters add up over processes
    # the same queue seen twice: the later reading is the current depth, not the larger, older one
    assert _value(text, "facesr_queue_depth") == 5
    assert _value(text, "facesr_inflight_requests") == 3  # in-flight requests add up over live processes
    text = _python(_RENDER, env, first)  # the first process exited: its live gauges go
    assert _value(text, "facesr_inflight_requests") == 1
    assert _value(text, "facesr_inferences_total") == 7  # counters keep what happened


_BUSY_CHILD = textwrap.dedent(
    """
    import os, sys, time
    from facesr.service import metrics
    metrics.INFLIGHT_REQUESTS.inc(int(sys.argv[1]))
    print(os.getpid(), flush=True)
    time.sleep(120)
    """
)
_SWEEP_AND_RENDER = textwrap.dedent(
    """
    import sys
    from facesr.service import metrics
    sys.stderr.write(" ".join(map(str, metrics.mark_dead_processes())))
    sys.stdout.write(metrics.render_latest()[0].decode())
    """
)


def start_busy_process(env: dict[str, str], inflight: int) -> subprocess.Popen[str]:
    """A process that has `inflight` requests in flight and stays alive until killed."""
    process = subprocess.Popen(
        [sys.executable, "-c", _BUSY_CHILD, str(inflight)],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == str(process.pid)  # its gauge file is written
    return process


def test_a_killed_processes_inflight_requests_stop_counting(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    killed = start_busy_process(env, 2)
    alive = start_busy_process(env, 1)
    try:
        killed.kill()  # SIGKILL: no shutdown code runs, its gauge file stays behind
        killed.wait(timeout=30)
        assert any(str(killed.pid) in name for name in os.listdir(tmp_path))

        done = _run_python(_SWEEP_AND_RENDER, env)
        assert done.stderr.split() == [str(killed.pid)]
        assert _value(done.stdout, "facesr_inflight_requests") == 1  # only the live process's request
        assert any(f"_{alive.pid}.db" in name for name in os.listdir(tmp_path))  # the live one is kept
    finally:
        for process in (killed, alive):
            process.kill()
            process.wait(timeout=30)
            if process.stdout is not None:
                process.stdout.close()


def test_worker_endpoint_serves_metrics_health_and_readiness() -> None:
    ready = {"value": False}
    server = metrics.start_metrics_server(0, "127.0.0.1", ready=lambda: ready["value"])
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
            assert response.status == 200
            exposed = families(response.read().decode())
        assert set(WORKER_FAMILIES) <= set(exposed)
        assert not set(API_FAMILIES) & set(exposed), "a worker target must not expose the API's metrics"
        with urllib.request.urlopen(f"{base}/healthz", timeout=5) as response:
            assert response.status == 200
        with pytest.raises(urllib.error.HTTPError) as not_ready:
            urllib.request.urlopen(f"{base}/readyz", timeout=5)
        assert not_ready.value.code == 503
        not_ready.value.close()
        ready["value"] = True
        with urllib.request.urlopen(f"{base}/readyz", timeout=5) as response:
            assert response.status == 200
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"{base}/nope", timeout=5)
        assert missing.value.code == 404
        missing.value.close()
    finally:
        server.shutdown()
        server.server_close()

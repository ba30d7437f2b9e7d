"""/metrics parses as Prometheus text and its numbers move as requests are served."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.service.conftest import RunningService, encode, face_array, scrape, value
from tests.service.worker.test_worker_metrics import start_busy_process

ROUTE = "/v1/super-resolve"


def test_metrics_parse_and_name_the_documented_families(service: RunningService):
    response = service.client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {family.name for family in text_string_to_metric_families(response.text)}
    api = {
        "facesr_http_requests",
        "facesr_request_duration_seconds",
        "facesr_rejected",
        "facesr_request_failures",
        "facesr_inflight_requests",
        "facesr_queue_depth",
    }
    worker = {
        "facesr_queue_wait_seconds",
        "facesr_batch_size",
        "facesr_batches",
        "facesr_inferences",
        "facesr_compute_seconds",
        "facesr_worker_ready",
    }
    assert api <= families
    if service.kind == "embedded":  # the worker runs in the API process
        assert worker <= families
    else:  # the workers are scraped on their own; here their families would only read 0
        assert not worker & families, f"worker metrics on the API target: {sorted(worker & families)}"


def test_counters_move_with_served_and_refused_requests(service: RunningService):
    before = scrape(service)

    for seed in range(3):
        response = service.client.post(
            ROUTE, files={"image": ("f.png", encode(face_array(16, 16, seed)), "image/png")}
        )
        assert response.status_code == 200
    refused = service.client.post(ROUTE, files={"image": ("f.png", b"garbage", "image/png")})
    assert refused.status_code == 400

    after = scrape(service)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("facesr_http_requests_total", route=ROUTE, code="200") == 3
    assert delta("facesr_http_requests_total", route=ROUTE, code="400") == 1
    assert delta("facesr_request_duration_seconds_count", route=ROUTE) == 4
    assert delta("facesr_request_duration_seconds_sum", route=ROUTE) > 0
    assert delta("facesr_rejected_total", reason="bad_image") == 1
    assert delta("facesr_inferences_total") == 3
    assert 1 <= delta("facesr_batches_total") <= 3
    assert delta("facesr_batch_size_count") == delta("facesr_batches_total")
    assert delta("facesr_queue_wait_seconds_count") == 3
    # The request being scraped is the only one in flight.
    assert value(after, "facesr_inflight_requests") == 1
    assert value(after, "facesr_queue_depth") == 0


def test_mean_batch_size_is_derivable(service: RunningService):
    samples = scrape(service)
    inferences = value(samples, "facesr_inferences_total")
    batches = value(samples, "facesr_batches_total")

    assert batches > 0
    assert 1 <= inferences / batches <= service.settings.max_batch_size


# A fresh API process (as uvicorn starts one in place of a killed one): app startup, then a scrape.
_REPLACEMENT_API_PROCESS = textwrap.dedent(
    """
    import asyncio, sys
    from facesr.service import metrics
    from facesr.service.api.app import create_app
    from facesr.service.settings import ServiceSettings

    class IdleQueue:
        async def start(self):
            pass

        async def close(self):
            pass

    app = create_app(ServiceSettings(), IdleQueue())

    async def main():
        async with app.router.lifespan_context(app):
            sys.stdout.write(metrics.render_latest("api")[0].decode())

    asyncio.run(main())
    """
)


def test_api_process_started_after_a_kill_drops_the_dead_ones_inflight_requests(tmp_path: Path):
    env = {
        name: item
        for name, item in os.environ.items()
        if not name.startswith("FACESR_") and name != "PROMETHEUS_MULTIPROC_DIR"
    }
    env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path)
    killed = start_busy_process(env, 3)  # an API process with 3 requests in flight...
    try:
        killed.kill()  # ...killed: it never runs its shutdown
        killed.wait(timeout=30)
        done = subprocess.run(
            [sys.executable, "-c", _REPLACEMENT_API_PROCESS],
            cwd=Path(__file__).resolve().parents[3],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        samples = {
            sample.name: sample.value
            for family in text_string_to_metric_families(done.stdout)
            for sample in family.samples
        }
        assert samples["facesr_inflight_requests"] == 0
    finally:
        killed.kill()
        killed.wait(timeout=30)
        if killed.stdout is not None:
            killed.stdout.close()

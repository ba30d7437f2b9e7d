"""/metrics parses as Prometheus text and its numbers move as requests are served."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.service.conftest import RunningService, encode, face_array, scrape, value

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

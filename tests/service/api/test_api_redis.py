"""Redis mode: readiness follows the workers, and a Redis outage is a fast 503 that heals by itself."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from facesr.model.inference import FaceSR
from tests.service.conftest import (
    RunningService,
    WorkerThread,
    encode,
    face_array,
    start_redis,
    wait_for_status,
)

pytestmark = pytest.mark.redis


def post_face(service: RunningService):
    return service.client.post(
        "/v1/super-resolve", files={"image": ("f.png", encode(face_array(16, 16)), "image/png")}
    )


@pytest.fixture
def workerless(tiny_engine: FaceSR, redis_url: str) -> Iterator[RunningService]:
    """An API on Redis with no worker yet (the test starts and stops workers itself)."""
    service = start_redis(tiny_engine, redis_url, with_worker=False)
    try:
        yield service
    finally:
        service.close()


def test_readiness_follows_workers_coming_and_going(workerless: RunningService, redis_url: str):
    not_ready = workerless.client.get("/readyz")
    assert not_ready.status_code == 503
    assert not_ready.headers["content-type"] == "application/problem+json"
    refused = post_face(workerless)
    assert refused.status_code == 503
    assert refused.json()["type"] == "urn:facesr:problem:not-ready"
    assert "retry-after" in refused.headers
    assert workerless.client.get("/v1/models").json() == {"models": []}

    worker = WorkerThread(workerless.settings, workerless.engine)
    worker.start()
    try:
        ready = wait_for_status(workerless.client, "/readyz", 200, timeout_s=30)
        assert ready.json()["ready_workers"] == 1
        assert post_face(workerless).status_code == 200
    finally:
        worker.stop()

    # A stopping worker withdraws its heartbeat; readiness drops without waiting for the TTL.
    wait_for_status(workerless.client, "/readyz", 503, timeout_s=10)
    assert post_face(workerless).status_code == 503


def test_redis_outage_is_a_fast_503_and_service_recovers(tiny_engine: FaceSR, redis_server, redis_url: str):
    service = start_redis(tiny_engine, redis_url)
    try:
        assert post_face(service).status_code == 200
        redis_server.stop()
        try:
            started = time.monotonic()
            during = post_face(service)
            elapsed = time.monotonic() - started
            assert during.status_code == 503, during.text
            assert during.headers["content-type"] == "application/problem+json"
            assert elapsed < 3.0
            assert service.client.get("/readyz").status_code == 503
            # The process itself is alive and observable during the outage.
            assert service.client.get("/healthz").status_code == 200
            assert service.client.get("/metrics").status_code == 200
        finally:
            redis_server.start()
        wait_for_status(service.client, "/readyz", 200, timeout_s=30)
        response = post_face(service)
        assert response.status_code == 200, response.text
    finally:
        service.close()

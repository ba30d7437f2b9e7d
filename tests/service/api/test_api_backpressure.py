"""Queue full (429 + Retry-After), deadlines (504) and client disconnects (the job is cancelled).

A `GatedEngine` holds the worker inside a batch, so the queue state is controlled exactly.
"""

from __future__ import annotations

import concurrent.futures
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from facesr.model.inference import FaceSR
from tests.service.conftest import (
    RunningService,
    encode,
    face_array,
    held_worker,
    queue_depth,
    scrape,
    start_embedded,
    start_redis,
    value,
    wait_until,
)

MAX_QUEUE = 2


def post_face(
    service: RunningService, *, seed: int = 0, headers=None, timeout: float = 30.0
) -> httpx.Response:
    return service.client.post(
        "/v1/super-resolve",
        files={"image": ("face.png", encode(face_array(16, 16, seed)), "image/png")},
        headers=headers or {},
        timeout=timeout,
    )


@pytest.fixture(scope="module", params=["embedded", pytest.param("redis", marks=pytest.mark.redis)])
def small_service(request: pytest.FixtureRequest, tiny_engine: FaceSR) -> Iterator[RunningService]:
    """A service whose queue holds only MAX_QUEUE jobs (waiting + computing)."""
    if request.param == "embedded":
        service = start_embedded(tiny_engine, max_queue=MAX_QUEUE)
    else:
        redis_server = request.getfixturevalue("redis_server")
        if redis_server.process is None or redis_server.process.poll() is not None:
            redis_server.start()
        service = start_redis(tiny_engine, redis_server.url, max_queue=MAX_QUEUE)
    try:
        yield service
    finally:
        service.engine.gate.set()
        service.close()


@pytest.fixture
def held(small_service: RunningService) -> Iterator[RunningService]:
    """The small service with its worker held; released (and drained) after the test."""
    with held_worker(small_service) as service:
        yield service


@contextmanager
def full_queue(held: RunningService) -> Iterator[list[concurrent.futures.Future[httpx.Response]]]:
    """MAX_QUEUE requests admitted and held; on exit the worker is released and they finish."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=MAX_QUEUE) as pool:
        waiting = [pool.submit(post_face, held, seed=i) for i in range(MAX_QUEUE)]
        wait_until(lambda: queue_depth(held) == MAX_QUEUE, message="a full queue")
        try:
            yield waiting
        finally:
            held.engine.gate.set()


def test_full_queue_answers_429_with_retry_after(held: RunningService):
    with full_queue(held) as waiting:
        before = scrape(held)
        refused = post_face(held, seed=99)
        after = scrape(held)
    admitted = [future.result(timeout=60) for future in waiting]
    assert refused.status_code == 429, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["type"] == "urn:facesr:problem:queue-full"
    assert int(refused.headers["retry-after"]) >= 1
    assert [r.status_code for r in admitted] == [200] * MAX_QUEUE
    assert (
        value(after, "facesr_rejected_total", reason="queue_full")
        == value(before, "facesr_rejected_total", reason="queue_full") + 1
    )


def test_expired_deadline_answers_504_and_the_job_is_skipped(held: RunningService):
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        entered = held.engine.entered
        blocker = pool.submit(post_face, held, seed=1)
        wait_until(lambda: held.engine.entered > entered, message="the blocker to reach the model")
        calls_before = held.engine.calls
        before = scrape(held)

        started = time.monotonic()
        late = post_face(held, seed=2, headers={"X-Deadline-Ms": "300"})
        elapsed = time.monotonic() - started

        held.engine.gate.set()
        assert blocker.result(timeout=60).status_code == 200
    wait_until(lambda: queue_depth(held) == 0, message="the queue to drain")
    after = scrape(held)
    assert late.status_code == 504, late.text
    assert late.json()["type"] == "urn:facesr:problem:deadline-exceeded"
    assert 0.25 <= elapsed < 5.0
    # Only the blocker's batch reached the model; the expired job was dropped by the worker.
    assert held.engine.calls == calls_before + 1
    skipped = ("facesr_expired_total", "facesr_cancelled_total")
    assert sum(value(after, name) - value(before, name) for name in skipped) == 1
    assert (
        value(after, "facesr_request_failures_total", reason="deadline")
        == value(before, "facesr_request_failures_total", reason="deadline") + 1
    )


def test_client_disconnect_cancels_the_job(held: RunningService):
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        entered = held.engine.entered
        blocker = pool.submit(post_face, held, seed=3)
        wait_until(lambda: held.engine.entered > entered, message="the blocker to reach the model")
        calls_before = held.engine.calls
        before = scrape(held)

        with pytest.raises(httpx.ReadTimeout):
            post_face(held, seed=4, timeout=0.5)  # the client gives up and closes the connection

        def cancelled_seen() -> bool:
            now = scrape(held)
            return value(now, "facesr_request_failures_total", reason="cancelled") > value(
                before, "facesr_request_failures_total", reason="cancelled"
            )

        # Noticed while the worker is still held: the disconnect, not a finished job, ended the request.
        wait_until(cancelled_seen, timeout_s=10, message="the disconnect to be noticed")
        held.engine.gate.set()
        assert blocker.result(timeout=60).status_code == 200
    wait_until(lambda: queue_depth(held) == 0, message="the queue to drain")
    after = scrape(held)
    assert held.engine.calls == calls_before + 1
    assert value(after, "facesr_cancelled_total") == value(before, "facesr_cancelled_total") + 1
    assert (
        value(after, "facesr_http_requests_total", route="/v1/super-resolve", code="499")
        == value(before, "facesr_http_requests_total", route="/v1/super-resolve", code="499") + 1
    )


def _partial_upload(service: RunningService, body_bytes: int, sent: int) -> bytes:
    """POST a multipart upload that announces `body_bytes` but sends only `sent` of them, then read what
    the server answers: only a server that decides before reading the body can answer at all."""
    boundary = "facesrboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="f.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    request = (
        f"POST /v1/super-resolve HTTP/1.1\r\nHost: test\r\nContent-Length: {body_bytes}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", service.server.port), timeout=10) as sock:
        sock.sendall(request + head + b"\0" * sent)
        return sock.recv(65536)


def test_a_full_queue_refuses_an_upload_before_reading_its_body(held: RunningService):
    with full_queue(held) as waiting:
        time.sleep(0.6)  # older than the status snapshot the pre-check reads
        limit = held.settings.max_upload_bytes
        answer = _partial_upload(held, body_bytes=limit - 1_000, sent=1_000)  # a small part of the body
    assert [future.result(timeout=60).status_code for future in waiting] == [200] * MAX_QUEUE
    status_line = answer.split(b"\r\n", 1)[0]
    assert b" 429 " in status_line, answer[:300]
    assert b"queue-full" in answer


def test_a_queue_full_answer_is_held_for_its_retry_after(held: RunningService):
    """A client that retries at once is slowed to one refusal per Retry-After instead of spinning."""
    with full_queue(held) as waiting:
        started = time.monotonic()
        refused = post_face(held, seed=98)
        took = time.monotonic() - started
    assert [future.result(timeout=60).status_code for future in waiting] == [200] * MAX_QUEUE
    assert refused.status_code == 429
    assert took >= min(float(refused.headers["retry-after"]), 5.0) - 0.6  # Retry-After is rounded up

"""facesr.client against the real service (a tiny model behind a real uvicorn server in a thread).

Retries are checked against real 429 answers of a service whose queue holds one job and whose worker is
held, and, for what the service never sends (an HTTP-date Retry-After, a plain-text error body, no answer
at all), against a small real HTTP server and a silent socket defined here.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import io
import json
import pickle
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from facesr.client import (
    AsyncClient,
    BadImageError,
    BatchResult,
    Client,
    DeadlineExceededError,
    FaceSRConnectionError,
    FaceSRTimeoutError,
    InputTooSmallError,
    InvalidOptionsError,
    ModelInfo,
    ProblemError,
    QueueFullError,
    ServerError,
    ServiceUnavailableError,
    SuperResolution,
    UnauthorizedError,
    UndecodableImageError,
    UnexpectedResponseError,
    UnknownModelError,
)
from facesr.client._parse import parse_super_resolved
from facesr.client._retry import parse_retry_after
from facesr.client._timeouts import DEADLINE_SLACK_S, Deadline
from facesr.client.errors import problem_error
from facesr.client.results import InputRecord
from facesr.model.inference import FaceSR
from tests.conftest import free_port
from tests.service.conftest import (
    MODEL_NAME,
    TINY_CONFIG,
    LiveServer,
    RunningService,
    encode,
    face_array,
    held_worker,
    queue_depth,
    start_embedded,
    wait_until,
)

PROBLEM_PREFIX = "urn:facesr:problem:"
README = Path(__file__).resolve().parents[2] / "README.md"


# -- helpers --------------------------------------------------------------------------------------------
@dataclass
class Attempt:
    path: str
    headers: dict[str, str]
    started: float
    ended: float = 0.0
    status: int | None = None  # None: the transport raised
    retry_after: str | None = None


class RecordingTransport(httpx.HTTPTransport):
    """httpx's real transport, recording every attempt (what was sent, when, what came back)."""

    def __init__(self) -> None:
        super().__init__()
        self.attempts: list[Attempt] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        attempt = Attempt(request.url.path, dict(request.headers), time.monotonic())
        self.attempts.append(attempt)
        try:
            response = super().handle_request(request)
        finally:
            attempt.ended = time.monotonic()
        attempt.status = response.status_code
        attempt.retry_after = response.headers.get("retry-after")
        return response

    @property
    def statuses(self) -> list[int | None]:
        return [attempt.status for attempt in self.attempts]


@pytest.fixture(scope="module")
def helen_face(shared_dir: Path) -> Path:
    """A real 128 x 128 Helen face (JPEG)."""
    return sorted((shared_dir / "data" / "helen-50" / "HR").glob("*.jpg"))[0]


def assert_face(face: SuperResolution) -> None:
    """Every field of a default JSON result, typed."""
    assert isinstance(face, SuperResolution)
    assert isinstance(face.image, Image.Image)
    assert face.image.size == (128, 128) and face.image.mode == "RGB"
    assert face.landmarks is not None and face.confidences is not None
    assert face.landmarks.shape == (68, 2) and face.landmarks.dtype == np.float64
    assert np.all((face.landmarks >= 0) & (face.landmarks < 128))
    assert face.confidences.shape == (68,)
    assert np.all((face.confidences >= 0) & (face.confidences <= 1))
    assert face.landmark_quality is not None and face.landmark_quality.status == "unevaluated"
    assert face.model == MODEL_NAME and face.model_id.startswith(MODEL_NAME)
    assert face.request_id
    assert {"decode", "queue", "compute", "encode"} <= set(face.timings_ms)
    assert all(isinstance(ms, float) for ms in face.timings_ms.values())
    assert face.batch_size is not None and face.batch_size >= 1
    assert face.steps is None and face.lr_image is None and face.bicubic_image is None


# -- one face -------------------------------------------------------------------------------------------
def test_a_helen_face_comes_back_typed(embedded_service: RunningService, helen_face: Path):
    with Client(embedded_service.url) as client:
        face = client.super_resolve(helen_face)

    assert_face(face)
    assert face.media_type == "image/png"
    assert face.input.format == "JPEG" and (face.input.width, face.input.height) == (128, 128)
    assert face.input.region == (0, 0, 128) and face.input.resized is True and face.input.resized_to == 16
    assert face.resized_from == (128, 128)
    assert face.input.transform is not None and "resize 128->16" in face.input.transform
    # A 128 x 128 upload maps landmarks back one to one.
    np.testing.assert_allclose(face.landmarks_in_input(), face.landmarks)
    with pytest.raises(ValueError, match="read-only"):
        face.landmarks[0, 0] = 1.0


def test_an_array_input_gives_the_models_pixels(embedded_service: RunningService, tiny_engine: FaceSR):
    lr = face_array(16, 16, seed=5)
    with Client(embedded_service.url) as client:
        face = client.super_resolve(lr)

    expected = tiny_engine.enhance_tensor(lr[None])[0]
    served = np.asarray(face.image).astype(int)
    difference = np.abs(served - expected.image.astype(int))
    assert difference.max() <= 1 and (difference > 0).mean() < 0.01
    assert face.landmarks is not None and expected.landmarks is not None
    np.testing.assert_allclose(face.landmarks, expected.landmarks, atol=0.5)
    assert face.input.fit is None and face.resized_from is None


@pytest.mark.parametrize(
    "make",
    [
        lambda lr: encode(lr, "PNG"),  # bytes
        lambda lr: Image.fromarray(lr),  # PIL RGB
        lambda lr: Image.fromarray(lr).convert("L"),  # PIL gray
        lambda lr: lr.mean(axis=2).astype(np.uint8),  # H x W array
        lambda lr: np.dstack([lr, np.full(lr.shape[:2], 255, np.uint8)]),  # H x W x 4 array
    ],
    ids=["bytes", "pil-rgb", "pil-gray", "array-gray", "array-rgba"],
)
def test_every_input_kind_is_accepted(embedded_service: RunningService, make):
    with Client(embedded_service.url) as client:
        face = client.super_resolve(make(face_array(16, 16, seed=2)))
    assert face.image.size == (128, 128)
    assert face.input.format == "PNG"


def test_inputs_the_client_cannot_send_are_refused_before_any_request():
    with Client("http://127.0.0.1:9") as client:
        with pytest.raises(TypeError, match="uint8"):
            client.super_resolve(np.zeros((16, 16, 3), np.float32))
        with pytest.raises(ValueError, match="H x W"):
            client.super_resolve(np.zeros((16, 16, 2), np.uint8))
        with pytest.raises(TypeError, match="path, bytes"):
            client.super_resolve(12345)
        with pytest.raises(ValueError, match="deadline_ms"):
            client.super_resolve(face_array(), deadline_ms=0)
        with pytest.raises(ValueError, match="at least one image"):
            client.super_resolve_batch([])


def test_steps_compare_and_format(embedded_service: RunningService, helen_face: Path):
    with Client(embedded_service.url) as client:
        face = client.super_resolve(helen_face, steps=True, compare=True, output_format="webp", quality=90)

    assert face.media_type == "image/webp" and face.image.format == "WEBP"
    assert face.steps is not None and len(face.steps) == TINY_CONFIG.num_steps
    assert all(step.size == (128, 128) for step in face.steps)
    assert face.lr_image is not None and face.lr_image.size == (16, 16)
    assert face.bicubic_image is not None and face.bicubic_image.size == (128, 128)
    # The bicubic baseline is the model input enlarged: shrinking it again gives back about that input.
    shrunk = np.asarray(face.bicubic_image.convert("RGB").resize((16, 16), Image.Resampling.BOX)).astype(int)
    assert np.abs(shrunk - np.asarray(face.lr_image.convert("RGB")).astype(int)).mean() < 12


def test_landmarks_off(embedded_service: RunningService):
    with Client(embedded_service.url) as client:
        face = client.super_resolve(face_array(), landmarks=False)
    assert face.landmarks is None and face.confidences is None
    with pytest.raises(ValueError, match="no landmarks"):
        face.landmarks_in_input()


@pytest.mark.parametrize(
    ("fit", "region"), [("pad", (0, -16, 64)), ("crop", (16, 0, 32)), (None, (16, 0, 32))]
)
def test_fit_and_the_input_record_map_landmarks_onto_the_upload(
    embedded_service: RunningService, fit, region
):
    wide = face_array(64, 32, seed=4)  # 2:1, so the service also warns that it is not square
    with Client(embedded_service.url) as client:
        face = client.super_resolve(wide, fit=fit)

    record = face.input
    assert (record.width, record.height) == (64, 32)
    assert record.fit == (fit or "crop") and record.region == region
    assert record.oriented is False and record.resized is True
    assert "not-square" in [warning.code for warning in face.warnings]
    assert all(warning.message for warning in face.warnings)
    assert record.transform is not None and record.transform.startswith(fit or "crop")
    assert (face.width, face.height) == (128, 128)
    x, y, side = region
    # Pixel centres: the output spans -0.5..127.5 and the square x - 0.5..x + side - 0.5, edge to edge.
    # So the output's centre (63.5) is the square's centre, and the output's first and last pixel
    # centres lie half an output pixel (side / 256 upload pixels) inside the square's edges.
    half = side / 256
    known = {
        (63.5, 63.5): (x + (side - 1) / 2, y + (side - 1) / 2),
        (0.0, 0.0): (x - 0.5 + half, y - 0.5 + half),
        (127.0, 127.0): (x + side - 0.5 - half, y + side - 0.5 - half),
    }
    mapped = record.to_input(np.array(list(known)), output_size=(face.width, face.height))
    np.testing.assert_allclose(mapped, np.array(list(known.values())))
    # Every landmark along the same edge-to-edge line.
    assert face.landmarks is not None
    expected = np.column_stack(
        [
            np.interp(face.landmarks[:, 0], [-0.5, 127.5], [x - 0.5, x + side - 0.5]),
            np.interp(face.landmarks[:, 1], [-0.5, 127.5], [y - 0.5, y + side - 0.5]),
        ]
    )
    np.testing.assert_allclose(face.landmarks_in_input(), expected)


def test_landmarks_map_with_the_output_size_the_response_states():
    """A 64 x 64 output (stated as width/height) maps its own centre, 31.5, onto the square's centre."""
    lr = Image.fromarray(face_array(64, 64, seed=3))
    buffer = io.BytesIO()
    lr.save(buffer, format="PNG")
    body = {
        "request_id": "r",
        "model": "m",
        "media_type": "image/png",
        "width": 64,
        "height": 64,
        "image": base64.b64encode(buffer.getvalue()).decode(),
        "landmarks": [{"x": 31.5, "y": 31.5, "confidence": 1.0}, {"x": 0.0, "y": 63.0, "confidence": 1.0}],
        "input": {"format": "PNG", "width": 40, "height": 60, "x": 10, "y": 20, "side": 32},
        "timings_ms": {},
    }
    face = parse_super_resolved(body)
    assert (face.width, face.height) == (64, 64)
    # Output pixel 0 is a quarter of an upload pixel (32 / 64 / 2) inside the square's edge at x - 0.5.
    np.testing.assert_allclose(face.landmarks_in_input(), [[25.5, 35.5], [9.75, 51.25]])
    without_size = parse_super_resolved({key: value for key, value in body.items() if key != "width"})
    assert without_size.width == 64  # from the image

    record = InputRecord(format="PNG", width=128, height=128, x=0, y=0, side=128)
    points = np.array([[0.0, 0.0], [12.25, 100.0], [127.0, 127.0]])
    np.testing.assert_allclose(record.to_input(points), points)  # one to one at 128 -> 128
    with pytest.raises(ValueError, match="input region"):
        InputRecord(format="PNG", width=1, height=1).to_input(points)


# -- errors from real problem documents -------------------------------------------------------------------
def test_a_non_image_is_a_typed_400_and_not_retried(embedded_service: RunningService):
    transport = RecordingTransport()
    with Client(embedded_service.url, transport=transport) as client, pytest.raises(BadImageError) as caught:
        client.super_resolve(b"this is a text file, not a face")

    error = caught.value
    assert type(error) is UndecodableImageError
    assert error.status == 400 and error.type == PROBLEM_PREFIX + "undecodable-image"
    assert error.slug == "undecodable-image" and error.title and error.detail
    assert error.request_id and error.request_id in str(error)
    assert error.instance == "/v1/super-resolve"
    assert error.retry_after is None
    assert transport.statuses == [400]


def test_too_small_an_image_is_input_too_small(embedded_service: RunningService):
    with Client(embedded_service.url) as client, pytest.raises(InputTooSmallError) as caught:
        client.super_resolve(face_array(4, 4))
    assert caught.value.status == 422 and caught.value.slug == "input-too-small"
    assert isinstance(caught.value, BadImageError)


def test_unknown_model_and_bad_option_are_typed_422s(embedded_service: RunningService):
    transport = RecordingTransport()
    with Client(embedded_service.url, transport=transport) as client:
        with pytest.raises(UnknownModelError) as unknown:
            client.super_resolve(face_array(), model="no-such-model")
        with pytest.raises(InvalidOptionsError) as bad_fit:
            client.super_resolve(face_array(), fit="stretch")

    assert unknown.value.status == 422 and unknown.value.available == [MODEL_NAME]
    assert type(bad_fit.value) is InvalidOptionsError and bad_fit.value.slug == "invalid-options"
    assert "fit" in bad_fit.value.detail
    assert transport.statuses == [422, 422]


API_KEY = "client-test-key-0123456789"


@pytest.fixture(scope="module")
def keyed_service(tiny_engine: FaceSR) -> Iterator[RunningService]:
    service = start_embedded(tiny_engine, api_keys=[API_KEY])
    try:
        yield service
    finally:
        service.close()


def test_api_key(keyed_service: RunningService):
    transport = RecordingTransport()
    with Client(keyed_service.url) as anonymous:
        assert anonymous.health().ok  # probes stay open
        with pytest.raises(UnauthorizedError) as caught:
            anonymous.super_resolve(face_array())
        with pytest.raises(UnauthorizedError):
            anonymous.models()
    assert caught.value.status == 401 and caught.value.slug == "unauthorized"
    with Client(keyed_service.url, api_key="wrong-key-0123456789") as wrong, pytest.raises(UnauthorizedError):
        wrong.super_resolve(face_array())
    with Client(keyed_service.url, api_key=API_KEY, transport=transport) as client:
        assert client.super_resolve(face_array()).image.size == (128, 128)
        assert [model.name for model in client.models()] == [MODEL_NAME]
        assert client.ready().ready
    assert [attempt.headers.get("authorization") for attempt in transport.attempts] == [
        f"Bearer {API_KEY}",
        f"Bearer {API_KEY}",
        None,  # probes get no key
    ]


# -- batch ----------------------------------------------------------------------------------------------
def test_batch_with_one_bad_item(embedded_service: RunningService, helen_face: Path):
    images = [helen_face, b"\x89PNG\r\n\x1a\n truncated", face_array(16, 16, seed=1)]
    with Client(embedded_service.url) as client:
        batch = client.super_resolve_batch(images, steps=True)

    assert isinstance(batch, BatchResult) and len(batch) == 3
    assert (batch.succeeded, batch.failed) == (2, 1)
    assert [item.index for item in batch] == [0, 1, 2]
    assert [item.ok for item in batch] == [True, False, True]
    assert batch[0].filename == helen_face.name and batch[2].filename == "image-2.png"
    for item in (batch[0], batch[2]):
        assert item.result is not None and item.error is None
        assert item.result.image.size == (128, 128)
        assert item.result.steps is not None and len(item.result.steps) == TINY_CONFIG.num_steps
        assert item.result.request_id == f"{batch.request_id}.{item.index}"
    bad = batch[1]
    assert isinstance(bad.error, UndecodableImageError) and bad.result is None
    assert bad.error.status == 400 and bad.error.request_id == f"{batch.request_id}.1"
    with pytest.raises(UndecodableImageError):
        bad.unwrap()
    assert [type(outcome) for outcome in batch.results] == [
        SuperResolution,
        UndecodableImageError,
        SuperResolution,
    ]


def test_a_batch_failing_as_a_whole_raises(embedded_service: RunningService):
    too_many = [face_array(16, 16, seed=i) for i in range(embedded_service.settings.max_batch_images + 1)]
    with Client(embedded_service.url) as client, pytest.raises(BadImageError) as caught:
        client.super_resolve_batch(too_many)
    assert caught.value.status == 413


# -- async ----------------------------------------------------------------------------------------------
def test_async_client(embedded_service: RunningService, helen_face: Path):
    async def main() -> tuple:
        async with AsyncClient(embedded_service.url) as client:
            faces = await asyncio.gather(*(client.super_resolve(face_array(seed=i)) for i in range(3)))
            helen = await client.super_resolve(helen_face, deadline_ms=10_000)
            batch = await client.super_resolve_batch([helen_face, b"nope"])
            models = await client.models()
            ready = await client.ready()
            try:
                await client.super_resolve(b"nope")
            except ProblemError as error:
                problem = error
            return faces, helen, batch, models, ready, problem

    faces, helen, batch, models, ready, problem = asyncio.run(main())
    for face in [*faces, helen]:
        assert_face(face)
    assert len({face.request_id for face in faces}) == 3
    assert [item.ok for item in batch] == [True, False]
    assert isinstance(models[0], ModelInfo) and models[0].name == MODEL_NAME
    assert ready.ready and ready.models == (MODEL_NAME,)
    assert isinstance(problem, UndecodableImageError)


# -- models, health, readiness ------------------------------------------------------------------------------
def test_models_health_and_readiness(embedded_service: RunningService):
    with Client(embedded_service.url) as client:
        [model] = client.models()
        health = client.health()
        ready = client.ready()
        waited = client.wait_ready(timeout_s=5)

    assert model.name == MODEL_NAME and model.default and model.model_id is not None
    assert model.model_id.startswith(MODEL_NAME)
    assert "licence" in model.card and "config" in model.card
    assert health.ok
    assert ready.ready and ready.mode == "embedded" and ready.ready_workers >= 1
    assert ready.models == (MODEL_NAME,) and waited.ready


# -- deadlines, timeouts and retries against the real service -----------------------------------------------
@pytest.fixture(scope="module")
def one_slot(tiny_engine: FaceSR) -> Iterator[RunningService]:
    """A service whose queue holds one job."""
    service = start_embedded(tiny_engine, max_queue=1)
    try:
        yield service
    finally:
        service.engine.gate.set()
        service.close()


@pytest.fixture
def held(one_slot: RunningService) -> Iterator[RunningService]:
    """The one-slot service with its worker held; released and drained after the test."""
    with held_worker(one_slot) as service:
        yield service


@pytest.fixture
def full(held: RunningService) -> Iterator[RunningService]:
    """The held service with its one slot taken by a request that finishes once the worker is released."""
    finished: list[int] = []
    blocker = threading.Thread(
        target=lambda: finished.append(
            held.client.post(
                "/v1/super-resolve", files={"image": ("f.png", encode(face_array()), "image/png")}
            ).status_code
        )
    )
    blocker.start()
    wait_until(lambda: queue_depth(held) == 1, message="a full queue")
    try:
        yield held
    finally:
        held.engine.gate.set()
        blocker.join(timeout=30)
        assert finished == [200]


def test_deadline_is_sent_and_a_504_is_typed(held: RunningService):
    transport = RecordingTransport()
    started = time.monotonic()
    with Client(held.url, transport=transport) as client, pytest.raises(DeadlineExceededError) as caught:
        client.super_resolve(face_array(), deadline_ms=400)
    elapsed = time.monotonic() - started

    assert transport.attempts[0].headers["x-deadline-ms"] == "400"
    assert caught.value.status == 504 and caught.value.slug == "deadline-exceeded"
    assert 0.35 <= elapsed < 5
    assert transport.statuses == [504]  # not retried


def test_client_timeout_is_stretched_to_the_deadline(held: RunningService):
    release = threading.Timer(1.0, held.engine.gate.set)
    release.start()
    try:
        with Client(held.url, timeout=0.3) as client:
            face = client.super_resolve(face_array(), deadline_ms=10_000)
    finally:
        release.cancel()
    assert face.image.size == (128, 128)


def test_without_a_deadline_the_client_timeout_holds(held: RunningService):
    transport = RecordingTransport()
    with Client(held.url, timeout=0.3, transport=transport) as client, pytest.raises(FaceSRTimeoutError):
        client.super_resolve(face_array())
    assert transport.statuses == [None]  # timeouts are not retried


def test_queue_full_is_retried_after_retry_after(full: RunningService):
    transport = RecordingTransport()

    def release_after_the_first_refusal() -> None:
        wait_until(lambda: transport.statuses[:1] == [429], message="the first 429")
        full.engine.gate.set()

    releaser = threading.Thread(target=release_after_the_first_refusal)
    releaser.start()
    with Client(full.url, transport=transport) as client:
        face = client.super_resolve(face_array(seed=7))
    releaser.join(timeout=30)

    assert face.image.size == (128, 128)
    assert transport.statuses == [429, 200]
    refused, admitted = transport.attempts
    assert refused.retry_after is not None and int(refused.retry_after) >= 1
    assert admitted.started - refused.ended >= int(refused.retry_after) - 0.01


@pytest.mark.parametrize(
    "limits",
    [{"max_retries": 0}, {"max_retry_wait": 0.5}, {"deadline_ms": 1500}],
    ids=["no-retries", "wait-cap", "deadline"],
)
def test_a_refusal_that_cannot_be_retried_in_bounds_is_raised(full: RunningService, limits: dict):
    deadline_ms = limits.pop("deadline_ms", None)
    transport = RecordingTransport()
    with Client(full.url, transport=transport, **limits) as client, pytest.raises(QueueFullError) as caught:
        client.super_resolve(face_array(seed=8), deadline_ms=deadline_ms)

    assert transport.statuses == [429]
    error = caught.value
    assert error.status == 429 and error.slug == "queue-full" and error.retry_after is not None
    assert error.retry_after >= 1 and error.retryable


def test_retries_are_bounded(full: RunningService):
    transport = RecordingTransport()
    with Client(full.url, transport=transport, max_retries=1) as client, pytest.raises(QueueFullError):
        client.super_resolve(face_array(seed=9))
    assert transport.statuses == [429, 429]
    first, second = transport.attempts
    assert first.retry_after is not None
    assert second.started - first.ended >= int(first.retry_after) - 0.01


def test_connection_errors_are_retried_a_bounded_number_of_times():
    transport = RecordingTransport()
    started = time.monotonic()
    url = f"http://127.0.0.1:{free_port()}"
    client = Client(url, transport=transport, max_retries=2)
    with client, pytest.raises(FaceSRConnectionError) as caught:
        client.models()
    assert len(transport.attempts) == 3 and transport.statuses == [None, None, None]
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    assert not isinstance(caught.value, FaceSRTimeoutError)
    assert time.monotonic() - started < 3
    with Client(f"http://127.0.0.1:{free_port()}") as client, pytest.raises(FaceSRConnectionError):
        client.wait_ready(timeout_s=0.3, interval_s=0.1)


# -- what the service does not send: a small real server ---------------------------------------------------
@dataclass
class Script:
    """What the scripted server saw: (path, deadline header, arrival time) per request."""

    seen: list[tuple[str, str | None, float]] = field(default_factory=list)


@pytest.fixture(scope="module")
def scripted() -> Iterator[tuple[LiveServer, Script]]:
    """GET /v1/models: a plain-text 503 with an HTTP-date Retry-After, then the list.
    POST /v1/super-resolve: a 429 problem with Retry-After: 1, then a plain-text 502."""
    script = Script()

    def calls(path: str) -> int:
        return sum(seen_path == path for seen_path, _, _ in script.seen)

    async def models(request: Request) -> Response:
        script.seen.append((request.url.path, request.headers.get("x-deadline-ms"), time.monotonic()))
        if calls("/v1/models") % 2 == 1:
            when = email.utils.formatdate(time.time() + 2, usegmt=True)
            return PlainTextResponse("warming up", status_code=503, headers={"Retry-After": when})
        return JSONResponse({"models": [{"name": "m", "model_id": "m-1", "default": True, "card": {}}]})

    async def super_resolve(request: Request) -> Response:
        script.seen.append((request.url.path, request.headers.get("x-deadline-ms"), time.monotonic()))
        if calls("/v1/super-resolve") % 2 == 1:
            problem = {"type": PROBLEM_PREFIX + "queue-full", "title": "Full", "status": 429, "detail": "x"}
            return JSONResponse(
                problem, status_code=429, media_type="application/problem+json", headers={"Retry-After": "1"}
            )
        return PlainTextResponse("<html>Bad Gateway</html>", status_code=502)

    app = Starlette(
        routes=[
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/super-resolve", super_resolve, methods=["POST"]),
        ]
    )
    server = LiveServer(app)
    server.start()
    try:
        yield server, script
    finally:
        server.stop()


def test_an_http_date_retry_after_is_honoured(scripted):
    server, script = scripted
    script.seen.clear()
    with Client(server.url) as client:
        [model] = client.models()
    assert model.name == "m" and model.model_id == "m-1"
    assert len(script.seen) == 2
    # The date has whole seconds: now + 2 s written down is 1-2 s away.
    assert script.seen[1][2] - script.seen[0][2] >= 0.95


def test_a_non_problem_error_is_typed_and_the_deadline_shrinks_on_retries(scripted):
    server, script = scripted
    script.seen.clear()
    with Client(server.url) as client, pytest.raises(ServerError) as caught:
        client.super_resolve(face_array(), deadline_ms=8000)

    error = caught.value
    assert type(error) is ServerError and error.status == 502
    assert error.type == "about:blank" and error.title == "Bad Gateway"
    assert "Bad Gateway" in error.detail and error.body == {}
    [(_, first, _), (_, second, _)] = script.seen  # the 429 was retried once, the 502 not
    assert first is not None and second is not None
    assert int(first) <= 8000 and int(second) <= int(first) - 1000


def test_an_async_client_retries_too(scripted):
    server, script = scripted
    script.seen.clear()

    async def main() -> tuple[ModelInfo, ...]:
        async with AsyncClient(server.url) as client:
            return await client.models()

    assert [model.name for model in asyncio.run(main())] == ["m"]
    assert len(script.seen) == 2


def test_a_plain_text_503_that_may_not_be_retried_is_raised(scripted):
    server, script = scripted
    script.seen.clear()
    with Client(server.url, max_retries=0) as client, pytest.raises(ServiceUnavailableError) as caught:
        client.models()
    assert caught.value.status == 503 and caught.value.retry_after is not None
    assert caught.value.detail == "warming up"
    assert len(script.seen) == 1


# -- a server that never answers ---------------------------------------------------------------------------
@pytest.fixture
def silent_url() -> Iterator[str]:
    """A listening socket that is never accepted from: connections open (the kernel's backlog), requests
    are taken in, and no answer ever comes."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def call(kind: str, url: str, operation: str, *args, **kwargs):
    """`operation` of a Client (kind "sync") or an AsyncClient ("async") whose timeout is 30 s."""
    if kind == "sync":
        with Client(url, timeout=30.0) as client:
            return getattr(client, operation)(*args, **kwargs)

    async def main():
        async with AsyncClient(url, timeout=30.0) as client:
            return await getattr(client, operation)(*args, **kwargs)

    return asyncio.run(main())


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_deadline_bounds_the_wait_for_a_server_that_never_answers(silent_url: str, kind: str):
    started = time.monotonic()
    with pytest.raises(FaceSRTimeoutError) as caught:
        call(kind, silent_url, "super_resolve", face_array(), deadline_ms=500)
    elapsed = time.monotonic() - started

    # The deadline plus the slack for a 504 to arrive, not the 30 s client timeout.
    assert 0.5 + DEADLINE_SLACK_S - 0.1 <= elapsed < 0.5 + DEADLINE_SLACK_S + 1.0
    assert "500 ms deadline" in str(caught.value)
    assert isinstance(caught.value.__cause__, httpx.ReadTimeout)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_wait_ready_gives_up_in_time_when_nothing_answers(silent_url: str, kind: str):
    started = time.monotonic()
    with pytest.raises(FaceSRTimeoutError):
        call(kind, silent_url, "wait_ready", timeout_s=1.0, interval_s=0.1)
    assert time.monotonic() - started < 2.0  # not the 30 s of one attempt's client timeout


def test_a_deadline_sets_each_attempts_limits():
    long_base = Deadline.start(400)
    assert long_base is not None
    limits = long_base.timeout(httpx.Timeout(30.0))
    assert limits.read is not None and 0.3 + DEADLINE_SLACK_S < limits.read <= 0.4 + DEADLINE_SLACK_S
    for phase in (limits.connect, limits.write, limits.pool):
        assert phase is not None and 0.3 < phase <= 0.4
    # A short client timeout is stretched to the deadline for the read, and kept for the rest.
    short_base = Deadline.start(10_000)
    assert short_base is not None
    stretched = short_base.timeout(httpx.Timeout(0.3))
    assert stretched.read is not None and stretched.read > 9.9 + DEADLINE_SLACK_S
    assert (stretched.connect, stretched.write, stretched.pool) == (0.3, 0.3, 0.3)
    # No client limit at all: the deadline still bounds every phase.
    unlimited = short_base.timeout(httpx.Timeout(None))
    assert unlimited.read is not None and unlimited.read <= 10 + DEADLINE_SLACK_S
    assert unlimited.connect is not None and unlimited.connect <= 10
    assert Deadline.start(None) is None
    for bad in (0, -5, 1.5, True, "100"):
        with pytest.raises(ValueError, match="deadline_ms"):
            Deadline.start(bad)  # type: ignore[arg-type]


# -- the README's example --------------------------------------------------------------------------------
def readme_python_client_example() -> str:
    """The ```python block of README.md's "### Python client" section."""
    text = README.read_text(encoding="utf-8")
    section = re.search(r"^### Python client\n(.*?)(?=^#{1,3} |\Z)", text, re.S | re.M)
    assert section is not None, "README.md has no '### Python client' section"
    block = re.search(r"^```python\n(.*?)^```", section.group(1), re.S | re.M)
    assert block is not None, "the README's Python client section has no ```python block"
    return block.group(1)


def test_the_readme_python_client_example_runs(
    embedded_service: RunningService, helen_face: Path, tmp_path: Path
):
    code = readme_python_client_example()
    assert "http://127.0.0.1:8000" in code and '"face.jpg"' in code, "the example's URL or file changed"
    script = tmp_path / "example.py"
    script.write_text(code.replace("http://127.0.0.1:8000", embedded_service.url), encoding="utf-8")
    shutil.copyfile(helen_face, tmp_path / "face.jpg")

    finished = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )

    assert finished.returncode == 0, finished.stderr
    with Image.open(tmp_path / "face-128.png") as saved:
        assert saved.size == (128, 128) and saved.mode == "RGB"
    assert MODEL_NAME in finished.stdout


# -- units ----------------------------------------------------------------------------------------------
def test_retry_after_values():
    now = 1_700_000_000.0
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after(email.utils.formatdate(now + 10, usegmt=True), now=now) == pytest.approx(10)
    assert parse_retry_after(email.utils.formatdate(now - 10, usegmt=True), now=now) == 0.0
    for unreadable in (None, "", "soon", "-1", "1.5"):
        assert parse_retry_after(unreadable) is None


def test_errors_survive_pickling():
    error = problem_error(
        422, {"type": PROBLEM_PREFIX + "unknown-model", "detail": "no", "available": ["a"]}, retry_after=2.0
    )
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is UnknownModelError and copy.available == ["a"]
    assert (copy.status, copy.detail, copy.retry_after, str(copy)) == (422, "no", 2.0, str(error))
    unexpected = pickle.loads(pickle.dumps(UnexpectedResponseError("odd", status=200, request_id="r")))
    assert (unexpected.status, unexpected.request_id, str(unexpected)) == (200, "r", "odd")


def test_the_client_imports_no_torch_and_no_server_code():
    probe = (
        "import json, sys\n"
        "import facesr.client\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'fastapi', 'starlette', 'uvicorn', 'safetensors', 'redis') "
        "or m.startswith(('facesr.model', 'facesr.service')))))\n"
    )
    finished = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert json.loads(finished.stdout) == []

"""Property-based fuzzing of uploads and options: never a 500, never a crash, still serving afterwards."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.service.conftest import RunningService, encode, face_array

# What a bad upload may legitimately get; 200 when a mutation still decodes.
UPLOAD_STATUSES = {200, 400, 413, 415}
FUZZ_SETTINGS = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)
SEEDS = {
    "png": encode(face_array(16, 16, 1)),
    "jpeg": encode(face_array(24, 24, 2), "JPEG", quality=80),
    "webp": encode(face_array(16, 16, 3), "WEBP"),
    "bmp": encode(face_array(8, 8, 4), "BMP"),
}


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    """A valid upload with a few bytes flipped, a slice cut out, junk inserted, or a truncated tail."""
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 4))):
        operation = draw(st.sampled_from(["flip", "cut", "insert", "truncate"]))
        position = draw(st.integers(0, max(0, len(data) - 1)))
        if operation == "flip" and data:
            data[position] ^= draw(st.integers(1, 255))
        elif operation == "cut":
            del data[position : position + draw(st.integers(1, 64))]
        elif operation == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=64))
        else:
            del data[position:]
    return bytes(data)


def assert_not_a_crash(response, allowed: set[int]) -> None:
    assert response.status_code in allowed, (response.status_code, response.text)
    if response.status_code != 200:
        assert response.headers["content-type"] == "application/problem+json"


def post(service: RunningService, data: bytes, mime: str = "image/png", params=None):
    return service.client.post(
        "/v1/super-resolve",
        files={"image": ("upload", data, mime)},
        params=params or {},
        headers={"Accept": "application/json"},
    )


@pytest.fixture
def embedded(embedded_service: RunningService) -> RunningService:
    embedded_service.engine.gate.set()
    return embedded_service


@FUZZ_SETTINGS
@given(
    data=st.binary(max_size=4096),
    mime=st.sampled_from(["image/png", "application/octet-stream", "image/jpeg"]),
)
def test_random_bytes_never_crash(embedded: RunningService, data: bytes, mime: str):
    assert_not_a_crash(post(embedded, data, mime), UPLOAD_STATUSES)


@settings(FUZZ_SETTINGS, max_examples=60)
@given(data=mutated_images())
def test_mutated_images_never_crash(embedded: RunningService, data: bytes):
    assert_not_a_crash(post(embedded, data), UPLOAD_STATUSES)


@settings(FUZZ_SETTINGS, max_examples=60)
@given(
    params=st.dictionaries(
        st.sampled_from(["format", "quality", "landmarks", "steps", "model", "extra"]),
        st.text(max_size=12),
        max_size=3,
    )
)
def test_random_options_never_crash(embedded: RunningService, params: dict[str, str]):
    response = post(embedded, SEEDS["png"], params=params)
    assert_not_a_crash(response, {200, 406, 422})


# Header values HTTP/1.1 can carry at all (visible ASCII and spaces); anything else never reaches the app.
header_values = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)


@settings(FUZZ_SETTINGS, max_examples=40)
@given(deadline=header_values, request_id=header_values, accept=header_values)
def test_random_headers_never_crash(embedded: RunningService, deadline: str, request_id: str, accept: str):
    response = embedded.client.post(
        "/v1/super-resolve",
        files={"image": ("f.png", SEEDS["png"], "image/png")},
        headers={"X-Deadline-Ms": deadline, "X-Request-ID": request_id, "Accept": accept},
    )
    assert_not_a_crash(response, {200, 406, 422})


def test_service_still_serves_after_fuzzing(embedded: RunningService):
    assert embedded.client.get("/healthz").status_code == 200
    assert embedded.client.get("/readyz").status_code == 200
    response = post(embedded, SEEDS["jpeg"], "image/jpeg")
    assert response.status_code == 200, response.text

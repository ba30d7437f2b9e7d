"""Property-based fuzzing of uploads, options and headers against the live embedded API.

Every generated request must get a deliberate answer: never a 5xx, every refusal a complete
problem+json document. Each test counts the statuses it saw and requires both refusals and
successes, so it cannot pass without the requests reaching the endpoint and the model.
"""

from __future__ import annotations

import base64
from collections import Counter

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.service.conftest import RunningService, decode, encode, face_array, png_claiming

PROBLEM = "application/problem+json"
# What a bad upload may legitimately get (200 when the bytes still hold a decodable image).
UPLOAD_REFUSALS = {400, 413, 415}
UPLOAD_PROBLEMS = {
    "urn:facesr:problem:undecodable-image",
    "urn:facesr:problem:unsupported-media-type",
    "urn:facesr:problem:image-too-large",
    "urn:facesr:problem:payload-too-large",
}
SUCCESS_TYPES = {"application/json", "image/png", "image/jpeg", "image/webp"}
# No database: runs are deterministic (derandomize) and leave no files behind.
FUZZ_SETTINGS = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
    database=None,
)
SEEDS = {
    "png": encode(face_array(16, 16, 1)),
    "jpeg": encode(face_array(24, 24, 2), "JPEG", quality=80),
    "webp": encode(face_array(16, 16, 3), "WEBP"),
    "bmp": encode(face_array(8, 8, 4), "BMP"),
}
# Deadlines this long never expire on a test machine; shorter ones may rightly end in 504.
SAFE_BUDGET_MS = 20_000


def check_answer(response: httpx.Response, refusals: set[int], statuses: Counter[int]) -> None:
    """Not a crash: a 200 with a body, or one of `refusals` as a complete problem document."""
    status = response.status_code
    statuses[status] += 1
    assert status < 500, (status, response.text)
    if status == 200:
        assert response.headers["content-type"] in SUCCESS_TYPES
        assert response.content
        return
    assert status in refusals, (status, response.text)
    assert response.headers["content-type"] == PROBLEM, response.headers
    body = response.json()
    assert body["status"] == status
    assert body["type"].startswith("urn:facesr:problem:")
    assert body["title"]
    assert body["detail"]
    assert body["request_id"] == response.headers["x-request-id"]


def assert_both_outcomes(statuses: Counter[int], minimum_requests: int) -> None:
    """The run was not vacuous: enough requests, some served and some refused."""
    assert sum(statuses.values()) >= minimum_requests, statuses
    assert statuses[200] >= 1, f"no generated input was served: {statuses}"
    assert sum(count for status, count in statuses.items() if status != 200) >= 1, statuses


def post(service: RunningService, data: bytes, mime: str = "image/png", params=None) -> httpx.Response:
    return service.client.post(
        "/v1/super-resolve",
        files={"image": ("upload", data, mime)},
        params=params or {},
        headers={"Accept": "application/json"},
    )


@pytest.fixture
def embedded(embedded_service: RunningService) -> RunningService:
    embedded_service.engine.gate.set()
    embedded_service.wait_ready()
    return embedded_service


@st.composite
def random_uploads(draw: st.DrawFn) -> bytes:
    """Random bytes; about one in eight trails a valid image (decoders ignore trailing bytes, so those
    are served: the controls that prove the requests reach the model)."""
    junk = draw(st.binary(max_size=4096))
    if draw(st.sampled_from(["junk"] * 7 + ["image"])) == "image":
        return SEEDS[draw(st.sampled_from(sorted(SEEDS)))] + junk
    return junk


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    """A valid upload with up to four edits: bytes flipped, a slice cut out, junk inserted or appended,
    or the tail truncated."""
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(0, 4))):
        operation = draw(st.sampled_from(["flip", "cut", "insert", "append", "truncate"]))
        position = draw(st.integers(0, max(0, len(data) - 1)))
        if operation == "flip" and data:
            data[position] ^= draw(st.integers(1, 255))
        elif operation == "cut":
            del data[position : position + draw(st.integers(1, 64))]
        elif operation == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=64))
        elif operation == "append":
            data += draw(st.binary(min_size=1, max_size=64))
        else:
            del data[position:]
    return bytes(data)


def test_random_bytes_never_crash(embedded: RunningService):
    statuses: Counter[int] = Counter()

    @FUZZ_SETTINGS
    @given(
        data=random_uploads(),
        mime=st.sampled_from(["image/png", "application/octet-stream", "image/jpeg"]),
    )
    def check(data: bytes, mime: str) -> None:
        response = post(embedded, data, mime)
        check_answer(response, UPLOAD_REFUSALS, statuses)
        if response.status_code != 200:
            # refused by the upload checks, so the bytes did reach the endpoint's decoder
            assert response.json()["type"] in UPLOAD_PROBLEMS

    check()
    assert_both_outcomes(statuses, minimum_requests=50)


def test_mutated_images_never_crash(embedded: RunningService):
    statuses: Counter[int] = Counter()

    @settings(FUZZ_SETTINGS, max_examples=60)
    @given(data=mutated_images())
    def check(data: bytes) -> None:
        response = post(embedded, data)
        check_answer(response, UPLOAD_REFUSALS, statuses)
        if response.status_code == 200:
            assert decode(base64.b64decode(response.json()["image"])).size == (128, 128)

    check()
    assert_both_outcomes(statuses, minimum_requests=30)


# Each option: a value it accepts, or any short text.
VALID_OPTION_VALUES = {
    "format": ["png", "jpeg", "webp"],
    "quality": ["1", "50", "100"],
    "landmarks": ["true", "false"],
    "steps": ["true", "false"],
    "model": ["tiny"],
    "extra": [],
}
option_values = {
    name: st.one_of(st.sampled_from(values), st.text(max_size=12)) if values else st.text(max_size=12)
    for name, values in VALID_OPTION_VALUES.items()
}


@st.composite
def option_sets(draw: st.DrawFn) -> dict[str, str]:
    names = draw(st.lists(st.sampled_from(sorted(VALID_OPTION_VALUES)), max_size=3, unique=True))
    return {name: draw(option_values[name]) for name in names}


def test_random_options_never_crash(embedded: RunningService):
    statuses: Counter[int] = Counter()

    @settings(FUZZ_SETTINGS, max_examples=40)
    @given(params=option_sets())
    def check(params: dict[str, str]) -> None:
        check_answer(post(embedded, SEEDS["png"], params=params), {406, 422}, statuses)

    check()
    assert_both_outcomes(statuses, minimum_requests=20)


# Header values HTTP/1.1 can carry at all: visible ASCII with inner spaces (surrounding whitespace is not
# part of a field value, and clients refuse to send it); anything else never reaches the app.
header_values = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40).map(str.strip)


def _short_budget(value: str) -> bool:
    """Whether `value` is a valid but short X-Deadline-Ms, which may rightly expire (504)."""
    try:
        budget = int(value.strip())
    except ValueError:
        return False
    return 1 <= budget < SAFE_BUDGET_MS


deadlines = st.one_of(
    st.integers(SAFE_BUDGET_MS, 10**12).map(str),
    header_values.filter(lambda value: not _short_budget(value)),
)
accepts = st.one_of(
    st.sampled_from(["application/json", "image/*", "image/png", "image/webp;q=0.5, */*;q=0.1", "*/*"]),
    header_values,
)


def test_random_headers_never_crash(embedded: RunningService):
    statuses: Counter[int] = Counter()

    @settings(FUZZ_SETTINGS, max_examples=30)
    @given(deadline=deadlines, request_id=header_values, accept=accepts)
    def check(deadline: str, request_id: str, accept: str) -> None:
        response = embedded.client.post(
            "/v1/super-resolve",
            files={"image": ("f.png", SEEDS["png"], "image/png")},
            headers={"X-Deadline-Ms": deadline, "X-Request-ID": request_id, "Accept": accept},
        )
        check_answer(response, {406, 422}, statuses)

    check()
    assert_both_outcomes(statuses, minimum_requests=15)


def test_service_still_serves_after_fuzzing(embedded: RunningService):
    """After a burst of hostile requests (sent here, so this holds when run alone too) the service is
    healthy, ready, has nothing stuck in its queue, and serves a good upload."""
    statuses: Counter[int] = Counter()
    hostile = [
        b"",
        b"\x00" * 1000,
        SEEDS["png"][:40],
        SEEDS["jpeg"][: len(SEEDS["jpeg"]) // 2],
        png_claiming(100_000, 100_000),
        b"GIF89a" + b"\x00" * 64,
    ]
    for data in hostile:
        check_answer(post(embedded, data), UPLOAD_REFUSALS, statuses)
    check_answer(post(embedded, SEEDS["png"], params={"quality": "0"}), {422}, statuses)
    assert statuses[200] == 0 and sum(statuses.values()) == len(hostile) + 1, statuses

    assert embedded.client.get("/healthz").status_code == 200
    ready = embedded.client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["queue_depth"] == 0
    response = post(embedded, SEEDS["jpeg"], "image/jpeg")
    assert response.status_code == 200, response.text
    assert decode(base64.b64decode(response.json()["image"])).size == (128, 128)

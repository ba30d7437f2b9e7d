"""Bad requests get the right problem+json status, never a 500 (both backends)."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from facesr.model.inference import FaceSR
from tests.service.conftest import (
    MODEL_NAME,
    RunningService,
    encode,
    face_array,
    png_claiming,
    start_embedded,
)

PROBLEM = "application/problem+json"


def post_image(
    service: RunningService, data: bytes, *, params=None, headers=None, name="face.png", mime="image/png"
):
    return service.client.post(
        "/v1/super-resolve", files={"image": (name, data, mime)}, params=params or {}, headers=headers or {}
    )


def assert_problem(response: httpx.Response, status: int, slug: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["status"] == status
    assert body["type"].startswith("urn:facesr:problem:")
    if slug is not None:
        assert body["type"] == f"urn:facesr:problem:{slug}"
    assert body["title"]
    assert body["detail"]
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def noisy_png(size: int = 64) -> bytes:
    rng = np.random.default_rng(1)
    return encode(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


# -- undecodable uploads (400) -----------------------------------------------------------------------------
def test_empty_file_is_400(service: RunningService):
    body = assert_problem(post_image(service, b""), 400, "undecodable-image")
    assert "empty" in body["detail"]


def test_non_image_bytes_are_400(service: RunningService):
    assert_problem(post_image(service, b"%PDF-1.7 definitely not a face" * 10), 400, "undecodable-image")


@pytest.mark.parametrize("cut", [0.5, 0.9])
def test_truncated_png_is_400(service: RunningService, cut: float):
    data = noisy_png()
    body = assert_problem(post_image(service, data[: int(len(data) * cut)]), 400, "undecodable-image")
    assert "truncated" in body["detail"] or "corrupt" in body["detail"]


def test_truncated_jpeg_is_400(service: RunningService):
    data = encode(face_array(64, 64), "JPEG")
    assert_problem(post_image(service, data[: len(data) // 2], mime="image/jpeg"), 400, "undecodable-image")


def test_png_with_broken_checksum_is_400(service: RunningService):
    data = bytearray(noisy_png())
    data[40] ^= 0xFF  # inside the first IDAT chunk: its CRC no longer matches
    assert_problem(post_image(service, bytes(data)), 400, "undecodable-image")


# -- unsupported types (415) ------------------------------------------------------------------------------
@pytest.mark.parametrize("pil_format", ["GIF", "TIFF"])
def test_other_image_formats_are_415(service: RunningService, pil_format: str):
    body = assert_problem(
        post_image(service, encode(face_array(16, 16), pil_format)), 415, "unsupported-media-type"
    )
    assert pil_format in body["detail"]


def test_part_declared_as_text_is_415(service: RunningService, png_face: bytes):
    assert_problem(post_image(service, png_face, mime="text/plain"), 415, "unsupported-media-type")


def test_body_that_is_not_multipart_is_415(service: RunningService, png_face: bytes):
    response = service.client.post(
        "/v1/super-resolve", content=png_face, headers={"Content-Type": "image/png"}
    )
    assert_problem(response, 415, "unsupported-media-type")


@pytest.mark.parametrize("pil_format", ["PNG", "JPEG"])
def test_octet_stream_part_is_sniffed_and_accepted(service: RunningService, pil_format: str):
    """A part declared only as binary, with no file extension: the format comes from the bytes."""
    data = encode(face_array(16, 16), pil_format)
    response = post_image(
        service, data, name="face", mime="application/octet-stream", headers={"Accept": "application/json"}
    )
    assert response.status_code == 200, response.text
    upload = response.json()["input"]
    assert (upload["format"], upload["width"], upload["height"]) == (pil_format, 16, 16)


# -- too large (413) --------------------------------------------------------------------------------------
def test_huge_dimensions_in_a_tiny_file_are_413(service: RunningService):
    data = png_claiming(100_000, 100_000)
    assert len(data) < 200
    body = assert_problem(post_image(service, data), 413, "image-too-large")
    assert str(service.settings.max_pixels) in body["detail"]


def test_moderately_oversized_header_names_the_dimensions(service: RunningService):
    body = assert_problem(post_image(service, png_claiming(2000, 1000)), 413, "image-too-large")
    assert "2000x1000" in body["detail"]


@pytest.mark.parametrize("kept", [1.0, 0.5])
def test_real_decompression_bomb_is_413_before_decoding(service: RunningService, kept: float):
    """A whole bomb, and one with its pixel data cut short: decoding the latter would fail (400), so
    its 413 shows the size was judged from the header before any pixel was decoded."""
    buffer = io.BytesIO()
    Image.new("L", (5000, 5000)).save(buffer, format="PNG")  # 25 Mpx of zeros in ~25 kB
    data = buffer.getvalue()
    assert len(data) < service.settings.max_upload_bytes
    body = assert_problem(post_image(service, data[: int(len(data) * kept)]), 413, "image-too-large")
    assert "5000x5000" in body["detail"]


def test_file_over_the_upload_limit_is_413(service: RunningService):
    data = b"\x89PNG" + b"\x00" * (service.settings.max_upload_bytes + 10)
    assert_problem(post_image(service, data), 413, "payload-too-large")


def test_body_far_over_the_limit_is_cut_off_with_413(service: RunningService):
    data = b"\x00" * (service.settings.max_upload_bytes * 4)
    assert_problem(post_image(service, data), 413, "payload-too-large")


# -- bad options (422) and representations (406) ------------------------------------------------------------
@pytest.mark.parametrize(
    "params",
    [
        {"format": "gif"},
        {"quality": "0"},
        {"quality": "high"},
        {"steps": "maybe"},
        {"landmarks": "sometimes"},
        {"model": "no spaces allowed"},
        {"fromat": "png"},
    ],
)
def test_bad_options_are_422(service: RunningService, png_face: bytes, params: dict):
    response = post_image(service, png_face, params=params, headers={"Accept": "application/json"})
    assert_problem(response, 422, "invalid-options")


def test_unknown_model_is_422_and_lists_the_served_ones(service: RunningService, png_face: bytes):
    body = assert_problem(post_image(service, png_face, params={"model": "nope"}), 422, "unknown-model")
    assert body["available"] == [MODEL_NAME]


@pytest.mark.parametrize("value", ["soon", "-5", "0", "1.5", "1.0", "1_000", "+5", "1e3", "", "9" * 5000])
def test_bad_deadline_header_is_422(service: RunningService, png_face: bytes, value: str):
    body = assert_problem(
        post_image(service, png_face, headers={"X-Deadline-Ms": value}), 422, "invalid-options"
    )
    assert body["errors"][0]["loc"] == ["header", "X-Deadline-Ms"]
    assert len(body["detail"]) < 200  # the value itself is not echoed back


class DeadlineRecorder:
    """Stands in for the app's queue backend: notes each submitted job's deadline, delegates the rest."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.deadlines: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)

    async def submit(self, job: Any) -> Any:
        self.deadlines.append(job.deadline)
        return await self.backend.submit(job)


@pytest.fixture
def submitted_deadlines(service: RunningService) -> Iterator[list[float]]:
    """The absolute deadlines (time.time() seconds) of the jobs the API submits during the test."""
    state = service.server.server.config.app.state.service
    recorder = DeadlineRecorder(state.backend)
    state.backend = recorder
    try:
        yield recorder.deadlines
    finally:
        state.backend = recorder.backend


def post_with_deadline(service: RunningService, png_face: bytes, budget_ms: int) -> tuple[float, float]:
    """Post with `X-Deadline-Ms: budget_ms`; the wall-clock interval around the request."""
    before = time.time()
    response = post_image(service, png_face, headers={"X-Deadline-Ms": str(budget_ms)})
    after = time.time()
    assert response.status_code == 200, response.text
    return before, after


def test_deadline_header_sets_the_jobs_deadline(
    service: RunningService, png_face: bytes, submitted_deadlines: list[float]
):
    budget_ms = service.settings.max_deadline_ms // 2
    assert budget_ms != service.settings.default_deadline_ms
    before, after = post_with_deadline(service, png_face, budget_ms)

    [deadline] = submitted_deadlines
    assert before + budget_ms / 1000 <= deadline <= after + budget_ms / 1000


def test_deadline_over_the_cap_is_capped_not_refused(
    service: RunningService, png_face: bytes, submitted_deadlines: list[float]
):
    cap_s = service.settings.max_deadline_ms / 1000
    asked_ms = 10**9
    assert asked_ms > service.settings.max_deadline_ms
    before, after = post_with_deadline(service, png_face, asked_ms)

    # Served (not refused), and the job waited for at most the cap, counted from the request's arrival.
    [deadline] = submitted_deadlines
    assert before + cap_s <= deadline <= after + cap_s


def test_missing_image_part_is_422(service: RunningService):
    response = service.client.post("/v1/super-resolve", files={"picture": ("x.png", b"abc", "image/png")})
    body = assert_problem(response, 422, "invalid-options")
    assert body["errors"][0]["loc"] == ["body", "image"]


def test_two_image_parts_are_422_not_one_ignored(service: RunningService, png_face: bytes):
    other = encode(face_array(16, 16, seed=5))
    response = service.client.post(
        "/v1/super-resolve",
        files=[("image", ("a.png", png_face, "image/png")), ("image", ("b.png", other, "image/png"))],
    )
    body = assert_problem(response, 422, "invalid-options")
    assert "exactly one image" in body["detail"] and "/v1/super-resolve/batch" in body["detail"]


@pytest.mark.parametrize(
    ("path", "part", "other_endpoints_part"),
    [("/v1/super-resolve", "image", "images"), ("/v1/super-resolve/batch", "images", "image")],
)
@pytest.mark.parametrize("extra", ["option-as-field", "misspelt-part", "other-endpoints-part"])
def test_unknown_form_fields_are_422(
    service: RunningService, png_face: bytes, path: str, part: str, other_endpoints_part: str, extra: str
):
    files = [(part, ("a.png", png_face, "image/png"))]
    data = None
    if extra == "option-as-field":  # an option sent as a form field would be ignored
        data = {"format": "jpeg"}
    else:
        name = "imgaes" if extra == "misspelt-part" else other_endpoints_part
        files.append((name, ("b.png", png_face, "image/png")))
    response = service.client.post(path, files=files, data=data, headers={"Accept": "application/json"})
    body = assert_problem(response, 422, "invalid-options")
    assert "unknown form field" in body["detail"]


def test_unknown_form_field_names_are_quoted_short_and_sanitised(service: RunningService, png_face: bytes):
    name = "<script>" + "x" * 500
    response = service.client.post(
        "/v1/super-resolve/batch",
        files=[("images", ("a.png", png_face, "image/png")), (name, ("b.png", b"?", "image/png"))],
    )
    body = assert_problem(response, 422, "invalid-options")
    assert "<" not in body["detail"] and "x" * 100 not in body["detail"]


@pytest.mark.parametrize(
    ("params", "accept"),
    [
        ({}, "text/html"),
        ({"steps": "true"}, "image/png"),
        ({"landmarks": "true"}, "image/*"),
        ({"format": "png"}, "image/jpeg"),
    ],
)
def test_unacceptable_representations_are_406(service: RunningService, png_face: bytes, params, accept):
    assert_problem(
        post_image(service, png_face, params=params, headers={"Accept": accept}), 406, "not-acceptable"
    )


def test_batch_only_speaks_json(service: RunningService, png_face: bytes):
    response = service.client.post(
        "/v1/super-resolve/batch",
        files=[("images", ("a.png", png_face, "image/png"))],
        headers={"Accept": "image/png"},
    )
    assert_problem(response, 406, "not-acceptable")


# -- routing ------------------------------------------------------------------------------------------------
def test_unknown_path_is_a_problem_404(service: RunningService):
    assert_problem(service.client.get("/v2/nothing-here"), 404, "not-found")


def test_wrong_method_is_a_problem_405(service: RunningService):
    assert_problem(service.client.get("/v1/super-resolve"), 405, "method-not-allowed")


# -- API keys (401) -----------------------------------------------------------------------------------------
API_KEY = "test-key-0123456789abcdef"


@pytest.fixture(scope="module")
def keyed_service(tiny_engine: FaceSR) -> Iterator[RunningService]:
    service = start_embedded(tiny_engine, api_keys=["another-key-9876543210", API_KEY])
    try:
        yield service
    finally:
        service.close()


def test_missing_api_key_is_401(keyed_service: RunningService, png_face: bytes):
    response = post_image(keyed_service, png_face)
    assert_problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "headers",
    [
        {"X-API-Key": "wrong-key-0123456789abcdef"},
        {"Authorization": "Bearer wrong-key-0123456789abcdef"},
        {"Authorization": f"Basic {API_KEY}"},
        {"X-API-Key": API_KEY[:-1]},
    ],
)
def test_wrong_api_key_is_401(keyed_service: RunningService, png_face: bytes, headers: dict):
    assert_problem(post_image(keyed_service, png_face, headers=headers), 401, "unauthorized")


@pytest.mark.parametrize("headers", [{"X-API-Key": API_KEY}, {"Authorization": f"Bearer {API_KEY}"}])
def test_valid_api_key_is_served(keyed_service: RunningService, png_face: bytes, headers: dict):
    assert post_image(keyed_service, png_face, headers=headers).status_code == 200


def test_auth_is_checked_before_the_body(keyed_service: RunningService):
    """An unauthenticated client learns nothing about its body: 401 even for a non-multipart one."""
    response = keyed_service.client.post(
        "/v1/super-resolve", content=b"x" * 10, headers={"Content-Type": "text/plain"}
    )
    assert_problem(response, 401, "unauthorized")


def test_probes_and_metrics_need_no_key(keyed_service: RunningService):
    for path in ("/healthz", "/readyz", "/metrics"):
        assert keyed_service.client.get(path).status_code == 200, path
    assert_problem(keyed_service.client.get("/v1/models"), 401, "unauthorized")


def test_openapi_declares_the_key_schemes(keyed_service: RunningService):
    schema = keyed_service.client.get("/openapi.json").json()
    assert set(schema["components"]["securitySchemes"]) == {"apiKeyHeader", "bearer"}
    assert schema["paths"]["/v1/super-resolve"]["post"]["security"]
    assert "security" not in schema["paths"]["/healthz"]["get"]


def test_chunked_body_over_the_limit_is_counted_and_cut_off(service: RunningService):
    """Without a Content-Length the limit is enforced while the body streams in."""
    part_header = (
        b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        b"Content-Type: image/png\r\n\r\n"
    )
    chunk = b"\x00" * 8192
    chunks = iter([part_header] + [chunk] * (service.settings.max_upload_bytes * 2 // len(chunk)))
    response = service.client.post(
        "/v1/super-resolve", content=chunks, headers={"Content-Type": "multipart/form-data; boundary=xyz"}
    )
    assert "content-length" not in response.request.headers
    assert_problem(response, 413, "payload-too-large")

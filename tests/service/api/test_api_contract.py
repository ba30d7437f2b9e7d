"""The HTTP contract of the super-resolution endpoints, on the embedded and the Redis backend."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from facesr.model.inference import FaceSR
from tests.service.conftest import MODEL_NAME, TINY_CONFIG, RunningService, decode, encode, face_array

JSON = {"Accept": "application/json"}


def post_image(
    service: RunningService, data: bytes, *, params=None, headers=None, name="face.png", mime="image/png"
):
    return service.client.post(
        "/v1/super-resolve", files={"image": (name, data, mime)}, params=params or {}, headers=headers or {}
    )


def server_timing_phases(header: str) -> set[str]:
    return {entry.split(";", 1)[0].strip() for entry in header.split(",")}


@pytest.mark.parametrize(
    ("output_format", "media_type", "pil_format"),
    [("png", "image/png", "PNG"), ("jpeg", "image/jpeg", "JPEG"), ("webp", "image/webp", "WEBP")],
)
def test_image_response_in_each_format(
    service: RunningService, png_face: bytes, output_format, media_type, pil_format
):
    response = post_image(service, png_face, params={"format": output_format})

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == media_type
    image = decode(response.content)
    assert image.format == pil_format
    assert image.size == (128, 128)
    assert image.mode == "RGB"


def test_png_output_is_the_models_output(service: RunningService, tiny_engine: FaceSR):
    """The served pixels are the engine's pixels for the same input (lossless PNG end to end)."""
    face = face_array(16, 16, seed=3)
    response = post_image(service, encode(face))

    assert response.status_code == 200, response.text
    served = np.asarray(decode(response.content))
    expected = tiny_engine.enhance_tensor(face[None])[0].image
    # Batches of different sizes may round a few pixels differently; anything more is a real bug.
    difference = np.abs(served.astype(int) - expected.astype(int))
    assert difference.max() <= 1
    assert (difference > 0).mean() < 0.01


def test_accept_header_chooses_the_image_format(service: RunningService, png_face: bytes):
    response = post_image(service, png_face, headers={"Accept": "image/webp"})

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/webp"
    assert decode(response.content).format == "WEBP"


def test_json_response_carries_image_landmarks_model_and_timings(service: RunningService, png_face: bytes):
    response = post_image(service, png_face, headers=JSON)

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    image = decode(base64.b64decode(body["image"]))
    assert image.size == (128, 128)
    assert body["media_type"] == "image/png"
    assert body["model"] == MODEL_NAME
    assert body["model_id"].startswith(MODEL_NAME)
    landmarks = np.asarray([[p["x"], p["y"]] for p in body["landmarks"]])
    assert landmarks.shape == (68, 2)
    assert np.all((landmarks >= 0) & (landmarks < 128))
    confidence = np.asarray([p["confidence"] for p in body["landmarks"]])
    assert np.all((confidence >= 0) & (confidence <= 1))
    # the test model's card carries no test-set evaluation, and the response says so
    assert body["landmark_quality"]["status"] == "unevaluated"
    assert "not been evaluated" in body["landmark_quality"]["message"]
    assert body["resized_from"] is None
    assert body["input"] == {
        "format": "PNG",
        "width": 16,
        "height": 16,
        "oriented": False,
        "fit": None,
        "x": 0,
        "y": 0,
        "side": 16,
        "resized": False,
        "resized_to": 16,
        "warnings": [],
    }
    assert body["batch_size"] >= 1
    assert {"decode", "queue", "compute", "encode"} <= set(body["timings_ms"])
    assert body["timings_ms"]["compute"] > 0
    assert body["request_id"] == response.headers["x-request-id"]


def test_landmarks_can_be_turned_off(service: RunningService, png_face: bytes):
    response = post_image(service, png_face, params={"landmarks": "false"}, headers=JSON)

    assert response.status_code == 200, response.text
    assert response.json()["landmarks"] is None


def test_steps_return_every_feedback_step(service: RunningService, png_face: bytes):
    response = post_image(service, png_face, params={"steps": "true", "format": "png"}, headers=JSON)

    assert response.status_code == 200, response.text
    body = response.json()
    steps = [np.asarray(decode(base64.b64decode(step))) for step in body["steps"]]
    assert len(steps) == TINY_CONFIG.num_steps
    assert all(step.shape == (128, 128, 3) for step in steps)
    final = np.asarray(decode(base64.b64decode(body["image"])))
    np.testing.assert_array_equal(steps[-1], final)


def served_pixels(service: RunningService, data: bytes, **kwargs) -> np.ndarray:
    """The PNG image response for `data`, as a signed integer array (so differences do not wrap)."""
    response = post_image(service, data, params={"format": "png"}, **kwargs)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return np.asarray(decode(response.content).convert("RGB")).astype(int)


def assert_same_face(served: np.ndarray, expected: np.ndarray) -> None:
    """Equal up to the rounding that batches of different sizes may cause (see the test above)."""
    assert served.shape == expected.shape == (128, 128, 3)
    difference = np.abs(served - expected)
    assert difference.max() <= 1, f"largest difference {difference.max()}"
    assert (difference > 0).mean() < 0.01


def test_non_16x16_input_is_resized_and_the_response_says_so(service: RunningService):
    large = encode(face_array(64, 48), "JPEG", quality=90)
    # What the model must see: the decoded upload's centred 48 x 48 square shrunk to 16x16 with PIL
    # bicubic, as in training.
    square = decode(large).convert("RGB").crop((8, 0, 56, 48))
    shrunk = np.asarray(square.resize((16, 16), Image.Resampling.BICUBIC))

    image_response = post_image(service, large, name="face.jpg", mime="image/jpeg")
    json_response = post_image(service, large, name="face.jpg", mime="image/jpeg", headers=JSON)
    small_response = post_image(service, encode(shrunk))

    assert image_response.status_code == 200, image_response.text
    assert image_response.headers["x-resized-from"] == "64x48"
    assert json_response.status_code == 200, json_response.text
    body = json_response.json()
    assert body["resized_from"] == [64, 48]
    assert body["input"] | {"warnings": None} == {
        "format": "JPEG",
        "width": 64,
        "height": 48,
        "oriented": False,
        "fit": "crop",
        "x": 8,
        "y": 0,
        "side": 48,
        "resized": True,
        "resized_to": 16,
        "warnings": None,
    }
    assert [warning["code"] for warning in body["input"]["warnings"]] == ["not-square"]
    assert image_response.headers["x-input-transform"] == "crop 8,0 48x48; resize 48->16 bicubic"
    assert image_response.headers["x-input-warnings"] == "not-square"
    assert small_response.status_code == 200, small_response.text
    assert "x-resized-from" not in small_response.headers, "a 16x16 upload is not resized"
    assert small_response.headers["x-input-transform"] == "none"
    assert "x-input-warnings" not in small_response.headers
    served = np.asarray(decode(image_response.content).convert("RGB")).astype(int)
    assert_same_face(served, np.asarray(decode(small_response.content).convert("RGB")).astype(int))


@pytest.mark.parametrize(("pil_format", "mime"), [("WEBP", "image/webp"), ("BMP", "image/bmp")])
def test_webp_and_bmp_uploads_are_accepted(service: RunningService, pil_format: str, mime: str):
    upload = encode(face_array(16, 16), pil_format)
    response = post_image(service, upload, name="face.bin", mime=mime, headers=JSON)

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["input"]["format"], body["input"]["width"], body["input"]["height"]) == (pil_format, 16, 16)
    assert decode(base64.b64decode(body["image"])).size == (128, 128)


def transparent_upload(kind: str) -> tuple[bytes, np.ndarray, np.ndarray]:
    """A 16x16 PNG whose transparent pixels hide bright colours (alpha only 0 or 255, so compositing
    is exact), with what it looks like composited on black and with its alpha ignored."""
    colours = face_array(16, 16, seed=7)
    opaque = np.zeros((16, 16), bool)
    opaque[3:13, 4:12] = True  # an opaque face inside a transparent frame
    buffer = io.BytesIO()
    if kind == "rgba":
        alpha = np.where(opaque, 255, 0).astype(np.uint8)
        Image.fromarray(np.dstack([colours, alpha])).save(buffer, format="PNG")
        hidden = colours
    else:  # a palette image whose last entry (magenta) is the transparent one
        quantized = Image.fromarray(colours).quantize(colors=255)
        indices = np.where(opaque, np.asarray(quantized), 255).astype(np.uint8)
        palette = Image.frombytes("P", (16, 16), indices.tobytes())
        palette.putpalette([*quantized.getpalette()[: 255 * 3], 255, 0, 255])
        hidden = np.asarray(palette.convert("RGB"))
        palette.save(buffer, format="PNG", transparency=255)
    on_black = np.where(opaque[..., None], hidden, 0).astype(np.uint8)
    assert hidden[~opaque].max() > 100, "the transparent pixels must not already be black"
    return buffer.getvalue(), on_black, hidden


@pytest.mark.parametrize("kind", ["rgba", "palette"])
def test_transparent_upload_is_composited_on_black(service: RunningService, kind: str):
    """The face served for a transparent upload is the one served for the same picture flattened onto
    black, not the one for the colours its transparent pixels hide."""
    upload, on_black, hidden = transparent_upload(kind)
    assert decode(upload).mode in ("RGBA", "P")

    served = served_pixels(service, upload)
    flattened = served_pixels(service, encode(on_black))
    alpha_ignored = served_pixels(service, encode(hidden))

    assert_same_face(served, flattened)
    # The check above can only tell the two apart if the hidden colours change the face.
    assert np.abs(served - alpha_ignored).mean() > 1.0


def test_server_timing_and_request_id_headers(service: RunningService, png_face: bytes):
    response = post_image(service, png_face, headers={"X-Request-ID": "client-trace-42"})

    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == "client-trace-42"
    phases = server_timing_phases(response.headers["server-timing"])
    assert {"decode", "queue", "compute", "encode", "total"} <= phases


def test_insane_request_id_is_replaced(service: RunningService):
    response = service.client.get("/healthz", headers={"X-Request-ID": "bad id; with spaces"})

    assert response.status_code == 200
    assert response.headers["x-request-id"] != "bad id; with spaces"
    assert len(response.headers["x-request-id"]) == 32


def test_batch_returns_one_result_or_error_per_image(service: RunningService):
    files = [
        ("images", ("a.png", encode(face_array(16, 16, seed=1)), "image/png")),
        ("images", ("b.txt", b"not an image at all", "image/png")),
        ("images", ("c.jpg", encode(face_array(32, 32, seed=2), "JPEG"), "image/jpeg")),
    ]
    response = service.client.post("/v1/super-resolve/batch", files=files, params={"format": "jpeg"})

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["succeeded"], body["failed"]) == (2, 1)
    first, broken, third = body["items"]
    assert (first["index"], first["ok"], first["filename"]) == (0, True, "a.png")
    assert decode(base64.b64decode(first["result"]["image"])).format == "JPEG"
    assert len(first["result"]["landmarks"]) == 68
    assert broken["ok"] is False
    assert broken["error"]["status"] == 400
    assert broken["error"]["type"].endswith("undecodable-image")
    assert third["result"]["resized_from"] == [32, 32]


def test_batch_refuses_more_images_than_allowed(service: RunningService, png_face: bytes):
    limit = service.settings.max_batch_images
    files = [("images", (f"{i}.png", png_face, "image/png")) for i in range(limit + 1)]
    response = service.client.post("/v1/super-resolve/batch", files=files)

    assert response.status_code == 413, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == "urn:facesr:problem:payload-too-large"
    assert f"{limit + 1} images" in body["detail"]
    assert str(limit) in body["detail"]


def test_models_lists_the_card(service: RunningService):
    response = service.client.get("/v1/models")

    assert response.status_code == 200, response.text
    [model] = response.json()["models"]
    assert model["name"] == MODEL_NAME
    assert model["default"] is True
    assert model["model_id"].startswith(MODEL_NAME)
    card = model["card"]
    assert card["config"]["num_steps"] == TINY_CONFIG.num_steps
    assert card["parameters"] > 0
    for key in ("training_data", "metrics", "licence", "description"):
        assert key in card
    # How it is served: the worker's runner layout, and the runners of all ready workers together.
    assert card["runner_layout"] == {
        "device": "cpu",
        "runners": 1,
        "threads_per_runner": 1,
        "max_batch_size": service.settings.max_batch_size,
        "chosen_by": "settings",
        "measured_faces_per_second": None,
    }
    assert card["runners"] == 1
    assert card["graph"] == "trace"  # the CPU default
    assert card["landmark_quality"]["status"] == "unevaluated", "random weights carry no evaluation"


def test_health_and_readiness(service: RunningService):
    health = service.client.get("/healthz")
    ready = service.client.get("/readyz")

    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    assert ready.status_code == 200
    body = ready.json()
    assert body["ready"] is True
    assert body["mode"] == service.kind
    assert body["models"] == [MODEL_NAME]
    assert body["ready_workers"] >= 1


def test_openapi_documents_the_endpoints(service: RunningService):
    schema = service.client.get("/openapi.json").json()
    docs = service.client.get("/docs")

    assert docs.status_code == 200
    assert {"/v1/super-resolve", "/v1/super-resolve/batch", "/v1/models", "/healthz", "/readyz"} <= set(
        schema["paths"]
    )


@pytest.mark.parametrize("path", ["/v1/super-resolve", "/v1/super-resolve/batch"])
def test_openapi_types_the_deadline_header_as_a_positive_integer(service: RunningService, path: str):
    schema = service.client.get("/openapi.json").json()
    [deadline] = [
        parameter
        for parameter in schema["paths"][path]["post"]["parameters"]
        if parameter["in"] == "header" and parameter["name"] == "X-Deadline-Ms"
    ]
    types = deadline["schema"].get("anyOf", [deadline["schema"]])
    [integer] = [variant for variant in types if variant.get("type") != "null"]

    assert integer["type"] == "integer"
    assert integer["minimum"] == 1
    assert "maximum" not in integer  # larger budgets are capped, not refused...
    assert "FACESR_MAX_DEADLINE_MS" in deadline["description"]  # ...and the cap is documented
    assert deadline.get("required", False) is False

    """Requests arriving while the worker is held end up in one batch (dynamic batching)."""
    import concurrent.futures

    faces = [encode(face_array(16, 16, seed=10 + i)) for i in range(4)]
    service.engine.gate.clear()
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
            futures = [pool.submit(post_image, service, face, headers=JSON) for face in faces]
            # The first job may already be in the held batch; the others queue up behind it.
            _wait_for_depth(service, 4)
            service.engine.gate.set()
            responses = [future.result(timeout=60) for future in futures]
    finally:
        service.engine.gate.set()
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    assert max(r.json()["batch_size"] for r in responses) >= 2


def _wait_for_depth(service: RunningService, depth: int, timeout_s: float = 20.0) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if service.client.get("/readyz").json().get("queue_depth", 0) >= depth:
            return
        time.sleep(0.02)
    raise AssertionError(f"queue depth never reached {depth}")


def test_image_response_decodes_to_rgb_with_content(service: RunningService):
    """A colourful input must not come back as a blank image (a decoding/encoding slip would)."""
    response = post_image(service, encode(face_array(16, 16, seed=5)))

    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(response.content))
    assert (image.format, image.mode, image.size) == ("PNG", "RGB", (128, 128))
    pixels = np.asarray(image)
    assert pixels.shape == (128, 128, 3)
    assert pixels.std() > 1.0
    # colour, not three equal channels
    assert np.abs(pixels[..., 0].astype(int) - pixels[..., 2]).mean() > 1.0


@pytest.mark.parametrize(("nrmse", "status"), [(0.05, "passed"), (0.94, "failed")])
def test_landmarks_follow_the_verdict_in_the_model_card(png_face: bytes, nrmse: float, status: str):
    """Passed: points with confidences. Failed: no points, and the response says why."""
    from facesr.model.checkpoint import ModelCard
    from facesr.model.generator import DICGenerator
    from facesr.model.landmark_quality import landmark_summary
    from tests.service.conftest import start_embedded

    card = ModelCard(
        name=MODEL_NAME,
        config=TINY_CONFIG.to_dict(),
        metrics={"landmarks": landmark_summary(nrmse, "helen-50")},
    )
    engine = FaceSR(DICGenerator(TINY_CONFIG), card, device="cpu", dtype="fp32")
    service = start_embedded(engine)
    try:
        body = post_image(service, png_face, headers=JSON).json()
        image_only = post_image(service, png_face)
    finally:
        service.close()
    assert body["landmark_quality"]["status"] == status
    assert image_only.status_code == 200, "the image itself is always served"
    if status == "failed":
        assert body["landmarks"] is None
        assert "withheld" in body["landmark_quality"]["message"]
    else:
        assert len(body["landmarks"]) == 68
        assert all(0 <= p["confidence"] <= 1 for p in body["landmarks"])


def test_openapi_documents_landmarks_with_confidence(service: RunningService):
    schemas = service.client.get("/openapi.json").json()["components"]["schemas"]
    assert set(schemas["LandmarkPoint"]["properties"]) == {"x", "y", "confidence"}
    assert "landmark_quality" in schemas["SuperResolved"]["properties"]

"""The input policy over HTTP: what is done to an upload is never hidden, degenerate uploads are refused."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from facesr.model.preprocess import bicubic_baseline
from tests.service.conftest import RunningService, decode, encode, face_array

JSON = {"Accept": "application/json"}
PROBLEM = "application/problem+json"


def _post(service: RunningService, data: bytes, *, params=None, headers=None, mime="image/png"):
    return service.client.post(
        "/v1/super-resolve",
        files={"image": ("face", data, mime)},
        params=params or {},
        headers=headers or {},
    )


def _green_centre(width: int, height: int) -> np.ndarray:
    """Red everywhere but a green centred square of the shorter side."""
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = 255
    side = min(width, height)
    x, y = (width - side) // 2, (height - side) // 2
    image[y : y + side, x : x + side] = (0, 255, 0)
    return image


def test_a_wide_upload_is_cropped_not_stretched_and_the_answer_says_so(service: RunningService):
    upload = encode(_green_centre(240, 80))
    response = _post(service, upload, params={"compare": "true"}, headers=JSON)

    assert response.status_code == 200, response.text
    body = response.json()
    model_input = np.asarray(decode(base64.b64decode(body["lr_image"])).convert("RGB"))
    assert model_input.shape == (16, 16, 3)
    assert (model_input == (0, 255, 0)).all(), "a squashed upload would mix red into the model input"
    record = body["input"]
    assert (record["fit"], record["x"], record["y"], record["side"]) == ("crop", 80, 0, 80)
    assert [w["code"] for w in record["warnings"]] == ["not-square"]
    assert "80x80" in record["warnings"][0]["message"]
    assert response.headers["x-input-warnings"] == "not-square"
    assert response.headers["x-input-transform"] == "crop 80,0 80x80; resize 80->16 bicubic"


def test_pad_keeps_the_whole_upload(service: RunningService):
    response = _post(
        service, encode(_green_centre(240, 80)), params={"fit": "pad", "compare": "1"}, headers=JSON
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["input"]["fit"], body["input"]["y"], body["input"]["side"]) == ("pad", -80, 240)
    model_input = np.asarray(decode(base64.b64decode(body["lr_image"])).convert("RGB")).astype(int)
    assert model_input[8, 0, 0] > 200 and model_input[8, 8, 1] > 200, "red sides and green centre both kept"


@pytest.mark.parametrize(
    ("width", "height", "codes"),
    [
        (128, 128, ["larger-than-output"]),
        (300, 200, ["not-square", "larger-than-output"]),
        (12, 12, ["upscaled"]),
    ],
)
def test_uploads_far_from_the_models_domain_are_processed_with_a_warning(
    service: RunningService, width: int, height: int, codes: list[str]
):
    upload = encode(face_array(width, height), "JPEG", quality=85)
    image_answer = _post(service, upload, mime="image/jpeg")
    json_answer = _post(service, upload, mime="image/jpeg", headers=JSON)

    assert image_answer.status_code == 200, image_answer.text
    assert image_answer.headers["x-input-warnings"] == ", ".join(codes)
    assert decode(image_answer.content).size == (128, 128)
    assert json_answer.status_code == 200, json_answer.text
    assert [w["code"] for w in json_answer.json()["input"]["warnings"]] == codes


@pytest.mark.parametrize(("width", "height"), [(1, 1), (7, 7), (4, 64)])
def test_degenerate_uploads_are_refused_with_a_422_problem(service: RunningService, width: int, height: int):
    response = _post(service, encode(face_array(width, height)), headers=JSON)

    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM
    problem = response.json()
    assert problem["type"] == "urn:facesr:problem:input-too-small"
    assert f"{width}x{height}" in problem["detail"] and "8x8" in problem["detail"]


def test_compare_returns_the_model_input_and_its_bicubic_baseline(service: RunningService):
    face = face_array(16, 16, seed=4)
    response = _post(service, encode(face), params={"compare": "true"}, headers=JSON)

    assert response.status_code == 200, response.text
    body = response.json()
    lr = np.asarray(decode(base64.b64decode(body["lr_image"])).convert("RGB"))
    np.testing.assert_array_equal(lr, face)
    bicubic = np.asarray(decode(base64.b64decode(body["bicubic_image"])).convert("RGB"))
    np.testing.assert_array_equal(bicubic, bicubic_baseline(face))
    plain = _post(service, encode(face), headers=JSON).json()
    assert plain["lr_image"] is None and plain["bicubic_image"] is None


def test_compare_needs_json(service: RunningService):
    response = _post(service, encode(face_array()), params={"compare": "true"})
    assert response.status_code == 406
    assert "application/json" in response.json()["detail"]


def test_an_unknown_fit_is_a_422(service: RunningService):
    response = _post(service, encode(face_array()), params={"fit": "stretch"}, headers=JSON)
    assert response.status_code == 422
    assert response.json()["type"] == "urn:facesr:problem:invalid-options"


def test_in_a_batch_a_degenerate_upload_fails_alone(service: RunningService):
    files = [
        ("images", ("a.png", encode(face_array()), "image/png")),
        ("images", ("b.png", encode(face_array(3, 3)), "image/png")),
    ]
    response = service.client.post("/v1/super-resolve/batch", files=files)

    assert response.status_code == 200, response.text
    first, second = response.json()["items"]
    assert first["ok"] and first["result"]["input"]["warnings"] == []
    assert not second["ok"] and second["error"]["status"] == 422
    assert second["error"]["type"] == "urn:facesr:problem:input-too-small"


def test_gif_is_refused_as_everywhere_else(service: RunningService):
    buffer = io.BytesIO()
    Image.fromarray(face_array()).save(buffer, format="GIF")
    response = _post(service, buffer.getvalue(), mime="image/gif")
    assert response.status_code == 415
    assert "PNG, JPEG, WebP or BMP" in response.json()["detail"]


def test_an_exif_rotated_upload_is_recorded_upright(service: RunningService):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 60 x 30, shown 30 x 60
    buffer = io.BytesIO()
    Image.fromarray(face_array(60, 30)).save(buffer, format="JPEG", exif=exif.tobytes())
    response = _post(service, buffer.getvalue(), mime="image/jpeg", headers=JSON)

    assert response.status_code == 200, response.text
    record = response.json()["input"]
    assert (record["width"], record["height"], record["oriented"]) == (30, 60, True)
    assert (record["fit"], record["x"], record["y"], record["side"]) == ("crop", 0, 15, 30)
    assert response.headers["x-input-transform"].startswith("exif-orientation; crop 0,15 30x30")

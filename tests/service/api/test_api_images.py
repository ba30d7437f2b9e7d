"""Upload validation and decoding (`facesr.service.images`), without a server."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from facesr.model.input_policy import prepare_face
from facesr.service.errors import (
    FaceTooSmallError,
    ImageTooLargeError,
    PayloadTooLargeError,
    UndecodableImageError,
    UnsupportedMediaTypeError,
)
from facesr.service.images import PixelBudget, check_part_type, decode_upload, encode_image, read_header
from tests.service.conftest import encode, face_array, png_claiming

LIMITS = {"max_bytes": 1 << 20, "max_pixels": 1 << 20}


def test_16x16_upload_is_passed_through_unchanged():
    face = face_array(16, 16, seed=7)
    decoded = decode_upload(encode(face), **LIMITS)

    np.testing.assert_array_equal(decoded.lr_rgb, face)
    assert decoded.resized_from is None
    assert (decoded.header.format, decoded.header.width, decoded.header.height) == ("PNG", 16, 16)


def test_larger_upload_is_centre_cropped_then_resized_with_pil_bicubic():
    face = face_array(96, 80, seed=8)  # 96 wide, 80 high
    decoded = decode_upload(encode(face), **LIMITS)

    square = Image.fromarray(face).crop((8, 0, 88, 80))
    expected = np.asarray(square.resize((16, 16), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(decoded.lr_rgb, expected)
    assert decoded.resized_from == (96, 80)
    assert (decoded.transform.fit, decoded.transform.x, decoded.transform.y) == ("crop", 8, 0)
    assert decoded.lr_rgb.dtype == np.uint8


def test_pad_keeps_the_whole_upload_with_its_edges_repeated():
    face = face_array(96, 80, seed=8)
    decoded = decode_upload(encode(face), **LIMITS, fit="pad")

    square = np.pad(face, ((8, 8), (0, 0), (0, 0)), mode="edge")
    expected = np.asarray(Image.fromarray(square).resize((16, 16), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(decoded.lr_rgb, expected)
    assert (decoded.transform.fit, decoded.transform.y, decoded.transform.side) == ("pad", -8, 96)


@pytest.mark.parametrize("size", [(7, 7), (1, 1), (7, 300), (300, 5)])
def test_a_degenerate_upload_is_refused_with_422(size: tuple[int, int]):
    with pytest.raises(FaceTooSmallError, match="at least 8x8"):
        decode_upload(encode(face_array(*size)), **LIMITS)


def test_exif_orientation_is_applied():
    """A phone JPEG stored landscape with 'rotate 90' in EXIF is decoded upright (portrait)."""
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    Image.fromarray(face_array(40, 20)).save(buffer, format="JPEG", exif=exif.tobytes())

    decoded = decode_upload(buffer.getvalue(), **LIMITS)

    assert decoded.resized_from == (20, 40)
    assert decoded.transform.oriented and (decoded.transform.width, decoded.transform.height) == (20, 40)
    plain = decode_upload(encode(face_array(40, 20)), **LIMITS)
    assert not plain.transform.oriented


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "I;16", "CMYK", "1"])
def test_unusual_modes_decode_to_rgb(mode: str):
    image = Image.fromarray(face_array(24, 24)).convert("RGBA" if mode in ("RGBA", "LA") else "RGB")
    if mode == "I;16":
        image = Image.fromarray(np.arange(24 * 24, dtype=np.uint16).reshape(24, 24) * 50)
    else:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG" if mode == "CMYK" else "PNG")

    decoded = decode_upload(buffer.getvalue(), **LIMITS)

    assert decoded.lr_rgb.shape == (16, 16, 3)


def test_animated_upload_uses_its_first_frame():
    frames = [Image.fromarray(face_array(16, 16, seed)) for seed in (1, 2)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="WEBP", save_all=True, append_images=frames[1:], lossless=True)

    decoded = decode_upload(buffer.getvalue(), **LIMITS)

    np.testing.assert_array_equal(decoded.lr_rgb, np.asarray(frames[0]))


def test_header_is_read_without_decoding_pixels():
    header = read_header(png_claiming(3000, 2000), max_pixels=10**7)
    assert (header.width, header.height) == (3000, 2000)

    with pytest.raises(ImageTooLargeError, match="3000x2000"):
        read_header(png_claiming(3000, 2000), max_pixels=10**6)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", UndecodableImageError),
        (b"hello", UndecodableImageError),
        (png_claiming(100_000, 100_000), ImageTooLargeError),
        (encode(face_array(8, 8), "GIF"), UnsupportedMediaTypeError),
        (b"\x00" * (LIMITS["max_bytes"] + 1), PayloadTooLargeError),
    ],
)
def test_bad_uploads_raise_their_domain_error(data: bytes, error: type[Exception]):
    with pytest.raises(error):
        decode_upload(data, **LIMITS)


def _noisy_png(size: int = 64) -> bytes:
    return encode(np.random.default_rng(1).integers(0, 256, (size, size, 3), dtype=np.uint8))


def _corrupt_uploads() -> dict[str, bytes]:
    png, jpeg = _noisy_png(), encode(face_array(64, 64), "JPEG")
    bmp, webp = encode(face_array(64, 64), "BMP"), encode(face_array(64, 64), "WEBP")
    return {
        "png cut in half": png[: len(png) // 2],
        "png cut near the end": png[: int(len(png) * 0.9)],
        "png cut inside the header": png[:20],
        "png signature then garbage": b"\x89PNG\r\n\x1a\n" + b"x" * 50,
        "jpeg cut in half": jpeg[: len(jpeg) // 2],
        "jpeg cut inside the header": jpeg[:30],
        "bmp cut short": bmp[:100],
        "webp cut short": webp[:40],
        "header announcing a bomb": png_claiming(100_000, 100_000),
    }


# Traces of the decoder's own messages: class names, buffer objects and their addresses, PIL phrases.
_DECODER_INTERNALS = (
    "OSError",
    "SyntaxError",
    "Error:",
    "PIL",
    "BytesIO",
    "0x",
    "<",
    "cannot identify",
    "broken data stream",
    "image file is truncated",
    "Truncated File Read",
    "decoder",
    "decompression bomb",
)


@pytest.mark.parametrize("name", sorted(_corrupt_uploads()))
def test_refusal_details_use_the_services_words_not_the_decoders(name: str, caplog):
    caplog.set_level(logging.DEBUG, logger="facesr.service")
    with pytest.raises((UndecodableImageError, ImageTooLargeError)) as refused:
        decode_upload(_corrupt_uploads()[name], **LIMITS)

    detail = refused.value.detail
    assert not [trace for trace in _DECODER_INTERNALS if trace in detail], detail
    assert "truncated" in detail or "corrupt" in detail or "pixels" in detail
    # The decoder's message itself is kept for the server log.
    assert any(record.levelno <= logging.INFO and "Error" in record.getMessage() for record in caplog.records)


def test_declared_part_types():
    for accepted in (None, "", "image/png", "image/jpeg; q=1", "application/octet-stream", "IMAGE/WEBP"):
        check_part_type(accepted)
    for refused in ("text/plain", "application/json", "video/mp4"):
        with pytest.raises(UnsupportedMediaTypeError):
            check_part_type(refused)


@pytest.mark.parametrize(("fmt", "lossless"), [("png", True), ("jpeg", False), ("webp", False)])
def test_encode_image_round_trip(fmt: str, lossless: bool):
    face = face_array(128, 128, seed=9)
    decoded = np.asarray(Image.open(io.BytesIO(encode_image(face, fmt, quality=95))).convert("RGB"))

    assert decoded.shape == (128, 128, 3)
    error = np.abs(decoded.astype(int) - face.astype(int)).mean()
    assert error == 0 if lossless else error < 4


def _jpeg(width: int, height: int) -> bytes:
    rng = np.random.default_rng(3)
    small = rng.integers(0, 256, (height // 64 + 1, width // 64 + 1, 3), dtype=np.uint8)
    photo = Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def test_a_large_jpeg_is_decoded_at_a_reduced_scale_a_face_sized_one_exactly(monkeypatch):
    drafts: list[tuple[int, int]] = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        drafts.append(size)
        return original(self, mode, size)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    large = decode_upload(_jpeg(2400, 1800), max_bytes=1 << 24, max_pixels=1 << 24)
    assert drafts and min(drafts[-1]) >= 256, drafts  # the decoder scales down, not below 256 px
    drafts.clear()
    small = _jpeg(400, 300)
    decoded = decode_upload(small, max_bytes=1 << 24, max_pixels=1 << 24)
    assert not drafts, "a face-sized JPEG decodes at full scale, as in training"
    np.testing.assert_array_equal(decoded.lr_rgb, prepare_face(Image.open(io.BytesIO(small))).lr_rgb)
    # the reduced-scale result is the same face: within a few grey levels of the full decode
    full = prepare_face(Image.open(io.BytesIO(_jpeg(2400, 1800)))).lr_rgb
    # the transform is in the full-size image's pixels although the decoder worked at a smaller scale
    assert (large.transform.width, large.transform.x, large.transform.side) == (2400, 300, 1800)
    assert np.abs(large.lr_rgb.astype(int) - full.astype(int)).mean() < 3


def test_a_batch_shares_one_pixel_budget() -> None:
    budget = PixelBudget(3 * 16 * 16)
    for _ in range(3):
        decode_upload(encode(face_array(16, 16)), max_bytes=1 << 20, max_pixels=1 << 20, budget=budget)
    with pytest.raises(ImageTooLargeError, match="pixel budget"):
        decode_upload(encode(face_array(16, 16)), max_bytes=1 << 20, max_pixels=1 << 20, budget=budget)

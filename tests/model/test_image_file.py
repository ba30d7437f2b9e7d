"""Reading files for the model, shared by the API and `facesr enhance`: formats, EXIF, large JPEGs."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facesr.model.image_file import (
    DamagedImageError,
    NotAnImageError,
    UnsupportedFormatError,
    decode_face,
    open_image,
)
from facesr.model.input_policy import InputTooSmallError, prepare_face


def _smooth(width: int, height: int) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    rgb = np.stack([xs / width, ys / height, (xs + ys) / (width + height)], axis=-1)
    return (rgb * 255).astype(np.uint8)


def _saved(array: np.ndarray, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=image_format, **options)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("width", "height", "fit"), [(1001, 1500, "crop"), (513, 2000, "pad"), (4000, 3000, "crop")]
)
def test_a_large_jpeg_is_recorded_at_full_size_though_decoded_smaller(
    width: int, height: int, fit: str
) -> None:
    data = _saved(_smooth(width, height), "JPEG", quality=80)
    face = decode_face(data, fit=fit)  # type: ignore[arg-type]
    with Image.open(io.BytesIO(data)) as full:
        expected = prepare_face(full.convert("RGB"), fit=fit).transform  # type: ignore[arg-type]
    assert face.transform == expected, "the record (region, sizes, warning texts) is the full image's"
    assert f"{width}x{height}" in " ".join(w.message for w in face.transform.warnings)


def test_a_multi_picture_jpeg_is_a_jpeg() -> None:
    frames = [Image.fromarray(_smooth(40, 40)), Image.fromarray(_smooth(40, 40)[::-1])]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="MPO", save_all=True, append_images=frames[1:])
    with Image.open(io.BytesIO(buffer.getvalue())) as raw:
        assert raw.format == "MPO"  # what PIL calls it
    face = decode_face(buffer.getvalue())
    assert face.format == "JPEG" and face.lr_rgb.shape == (16, 16, 3)


@pytest.mark.parametrize("image_format", ["GIF", "TIFF"])
def test_refused_formats_are_named(image_format: str) -> None:
    with pytest.raises(UnsupportedFormatError, match=f"{image_format} images are not accepted"):
        decode_face(_saved(_smooth(20, 20), image_format))


def test_not_an_image_and_damaged_images_are_told_apart() -> None:
    with pytest.raises(NotAnImageError, match="not a PNG, JPEG, WebP or BMP image"):
        decode_face(b"hello, not an image")
    png = _saved(_smooth(64, 64), "PNG")
    with pytest.raises(DamagedImageError, match="truncated or corrupt"):
        decode_face(png[: len(png) // 2])


def test_a_degenerate_image_is_refused_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "thin.png"
    Image.fromarray(_smooth(500, 5)).save(path)
    with pytest.raises(InputTooSmallError, match="500x5"):
        decode_face(path, fit="pad")


def test_exif_orientation_turns_the_record_too() -> None:
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 270 degrees to display: stored 60 x 30, upright 30 x 60
    data = _saved(_smooth(60, 30), "JPEG", exif=exif.tobytes())
    face = decode_face(data)
    assert face.stored_size == (60, 30)
    assert (face.transform.width, face.transform.height, face.transform.oriented) == (30, 60, True)
    assert (face.transform.x, face.transform.y, face.transform.side) == (0, 15, 30)


@pytest.mark.parametrize("orientation", [0, 9, 1])
def test_an_absent_or_invalid_orientation_turns_nothing(orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    face = decode_face(_saved(_smooth(60, 30), "JPEG", exif=exif.tobytes()))
    assert not face.transform.oriented and face.transform.width == 60


def test_a_16_bit_gray_png_keeps_its_tones() -> None:
    wide = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    face = decode_face(_saved(wide, "PNG"))
    mean = face.lr_rgb.astype(float).mean()
    assert 100 < mean < 155, f"a 16-bit ramp should average mid-gray, not {mean:.0f} (clipped to white)"


def test_open_image_reads_the_header_only() -> None:
    with open_image(_saved(_smooth(300, 200), "PNG")) as image:
        assert image.size == (300, 200)
        assert image.tile, "no pixel data decoded yet"


def test_the_api_and_the_cli_make_the_same_input_from_the_same_file(tmp_path: Path) -> None:
    from facesr.model.files import read_face
    from facesr.service.images import decode_upload

    data = _saved(_smooth(1200, 900), "JPEG", quality=85)  # large enough to be decoded at 1/2 scale
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    cli = read_face(path, "pad")
    api = decode_upload(data, max_bytes=1 << 24, max_pixels=1 << 24, fit="pad")
    np.testing.assert_array_equal(cli.lr_rgb, api.lr_rgb)
    assert cli.transform == api.transform

"""The input policy shared by the API and the CLI: square without distortion, size limits, warnings."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from facesr.model.config import HR_SIZE, LR_SIZE
from facesr.model.input_policy import (
    ACCEPTED_FORMATS,
    ACCEPTED_FORMATS_TEXT,
    ACCEPTED_SUFFIXES,
    MIN_INPUT_SIDE,
    InputTooSmallError,
    prepare_face,
    square_region,
    upright,
)
from facesr.model.preprocess import make_lr


def _image(width: int, height: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def _codes(width: int, height: int, fit: str = "crop") -> list[str]:
    return [w.code for w in prepare_face(_image(width, height), fit=fit).transform.warnings]  # type: ignore[arg-type]


def test_a_portrait_is_centre_cropped_never_stretched() -> None:
    # Left and right of a 48 x 16 strip are red, its centred 16 x 16 square is green: a crop sees only
    # green, a squash to 16 x 16 would mix in red.
    strip = np.zeros((16, 48, 3), np.uint8)
    strip[:, :, 0] = 255
    strip[:, 16:32] = (0, 255, 0)
    prepared = prepare_face(strip)
    assert (prepared.lr_rgb == (0, 255, 0)).all()
    transform = prepared.transform
    assert (transform.fit, transform.x, transform.y, transform.side) == ("crop", 16, 0, 16)
    assert transform.describe() == "crop 16,0 16x16"


def test_pad_repeats_the_edges_and_keeps_everything() -> None:
    image = _image(60, 40, seed=1)
    prepared = prepare_face(image, fit="pad")
    padded = np.pad(image, ((10, 10), (0, 0), (0, 0)), mode="edge")
    np.testing.assert_array_equal(prepared.lr_rgb, make_lr(padded))
    assert (prepared.transform.x, prepared.transform.y, prepared.transform.side) == (0, -10, 60)


@pytest.mark.parametrize(("width", "height"), [(128, 128), (70, 50), (50, 70), (17, 16)])
@pytest.mark.parametrize("fit", ["crop", "pad"])
def test_the_region_is_a_centred_square(width: int, height: int, fit: str) -> None:
    x, y, side = square_region(width, height, fit)  # type: ignore[arg-type]
    assert side == (min if fit == "crop" else max)(width, height)
    assert abs((x + side / 2) - width / 2) <= 0.5 and abs((y + side / 2) - height / 2) <= 0.5


def test_a_square_image_at_the_model_size_is_used_as_it_is() -> None:
    face = _image(LR_SIZE, LR_SIZE)
    prepared = prepare_face(face)
    np.testing.assert_array_equal(prepared.lr_rgb, face)
    assert prepared.transform.describe() == "none" and not prepared.transform.warnings
    prepared.lr_rgb[...] = 0  # a copy, not a view of the caller's array
    assert face.any()


def test_a_square_image_is_made_exactly_as_the_training_inputs() -> None:
    hr = _image(HR_SIZE, HR_SIZE, seed=2)
    np.testing.assert_array_equal(prepare_face(hr).lr_rgb, make_lr(hr))


@pytest.mark.parametrize(
    ("width", "height", "fit", "codes"),
    [
        (16, 16, "crop", []),
        (64, 64, "crop", []),
        (127, 127, "crop", []),
        (128, 128, "crop", ["larger-than-output"]),
        (2000, 3000, "crop", ["not-square", "larger-than-output"]),
        (12, 12, "crop", ["upscaled"]),
        (8, 8, "crop", ["upscaled"]),
        (40, 48, "crop", []),  # ratio 1.2: a normal face box
        (40, 60, "crop", ["not-square"]),
        (100, 40, "pad", ["not-square"]),
        (200, 100, "pad", ["not-square", "larger-than-output"]),
    ],
)
def test_warnings_say_when_the_result_is_worse_than_the_model_can_do(
    width: int, height: int, fit: str, codes: list[str]
) -> None:
    assert _codes(width, height, fit) == codes


@pytest.mark.parametrize(("width", "height"), [(1, 1), (7, 7), (7, 500), (500, 3)])
@pytest.mark.parametrize("fit", ["crop", "pad"])
def test_degenerate_images_are_refused(width: int, height: int, fit: str) -> None:
    with pytest.raises(InputTooSmallError, match=f"at least {MIN_INPUT_SIDE}x{MIN_INPUT_SIDE}"):
        prepare_face(_image(width, height), fit=fit)  # type: ignore[arg-type]


def test_an_unknown_fit_is_refused() -> None:
    with pytest.raises(ValueError, match="crop, pad"):
        prepare_face(_image(20, 20), fit="stretch")  # type: ignore[arg-type]


@pytest.mark.parametrize("fit", ["crop", "pad"])
def test_landmarks_map_back_onto_the_input_pixel_centre_to_pixel_centre(fit: str) -> None:
    transform = prepare_face(_image(300, 200), fit=fit).transform  # type: ignore[arg-type]
    scale = transform.side / HR_SIZE  # input pixels per output pixel
    # Output pixel 0 covers input pixels [x, x + scale): its centre is at x + scale / 2 - 0.5.
    first = transform.to_input(np.array([[0.0, 0.0]]))[0]
    np.testing.assert_allclose(first, [transform.x + scale / 2 - 0.5, transform.y + scale / 2 - 0.5])
    # The output's centre (between pixels 63 and 64) is the square's centre, and so the image's.
    centre = transform.to_input(np.array([[HR_SIZE / 2 - 0.5, HR_SIZE / 2 - 0.5]]))[0]
    np.testing.assert_allclose(centre, [149.5, 99.5])
    # One output pixel to the right is `scale` input pixels to the right.
    step = transform.to_input(np.array([[1.0, 0.0]]))[0] - first
    np.testing.assert_allclose(step, [scale, 0.0])


def test_a_pixel_of_a_shrunk_face_lands_where_it_came_from() -> None:
    """An 8 x 8 block of a 128 x 128 face shrunk 8 times is one LR pixel; its centre maps back onto the
    centre of the block, whatever the output size."""
    transform = prepare_face(_image(128, 128)).transform
    mapped = transform.to_input(np.array([[3.0, 5.0]]), output_size=16)[0]
    np.testing.assert_allclose(mapped, [3 * 8 + 3.5, 5 * 8 + 3.5])


def test_exif_orientation_is_applied_and_recorded() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to display
    buffer = io.BytesIO()
    Image.fromarray(_image(40, 20)).save(buffer, format="JPEG", exif=exif.tobytes())
    tagged = Image.open(buffer)
    turned, oriented = upright(tagged)
    assert oriented and turned.size == (20, 40)
    plain, oriented = upright(Image.fromarray(_image(40, 20)))
    assert not oriented and plain.size == (40, 20)


def test_one_format_list_for_api_and_cli() -> None:
    from facesr.model import files
    from facesr.service import images

    assert images.ACCEPTED_FORMATS_TEXT is ACCEPTED_FORMATS_TEXT
    assert not hasattr(files, "IMAGE_SUFFIXES") or files.IMAGE_SUFFIXES == ACCEPTED_SUFFIXES
    extensions = Image.registered_extensions()
    assert {extensions[suffix] for suffix in ACCEPTED_SUFFIXES} == set(ACCEPTED_FORMATS)

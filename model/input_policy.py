"""The input policy: what is done to a face image of any size before the model sees it (numpy and PIL).

The API and `facesr enhance` both follow it; docs/input-policy.md states it for users.

1. Formats: PNG, JPEG, WebP and BMP (`ACCEPTED_FORMATS`), recognised by their content; files with
   `ACCEPTED_SUFFIXES` are what a folder contributes to `facesr enhance`. Reading files is
   `facesr.model.image_file`.
2. Orientation: the EXIF orientation is applied first (a phone photo's face is upright); from here on
   every size and coordinate is the upright image's.
3. Shape: the aspect ratio is never distorted. A non-square image is centre-cropped to a square
   (`fit="crop"`, the default: the model was trained on tight square face crops) or padded to one by
   repeating its edge pixels (`fit="pad"`: nothing is cut off, but the face fills less of the frame).
4. Size: an image whose shorter side is below `MIN_INPUT_SIDE` is refused (`InputTooSmallError`), with
   either fit. The square is resized to 16 x 16 with `make_lr` (PIL bicubic, antialiased), the way the
   training LR faces were made; a side below 16 is enlarged and one of at least 128 (the output size)
   is shrunk, each with a warning (`InputWarning`), because the result is then softer than a real
   16 x 16 face would give, or than the input itself. Every step taken is recorded in `InputTransform`
   (`plan_transform` decides it from the size alone; `prepare_face` also makes the pixels).

Landmarks come back in output pixels: 0-based pixel centres, 0 <= x, y < 128.
`InputTransform.to_input` maps them onto the upright upload's pixels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Final, Literal

import numpy as np
from PIL import ExifTags, Image, ImageOps

from facesr.model.config import HR_SIZE, LR_SIZE
from facesr.model.errors import InputImageError
from facesr.model.preprocess import as_rgb_image, make_lr

Fit = Literal["crop", "pad"]
FITS: Final[tuple[Fit, ...]] = ("crop", "pad")
DEFAULT_FIT: Final[Fit] = "crop"

#: PIL format names accepted by the API and the CLI, checked against the file's content.
ACCEPTED_FORMATS: Final = ("PNG", "JPEG", "WEBP", "BMP")
#: File suffixes of those formats (what `facesr enhance` takes from a folder).
ACCEPTED_SUFFIXES: Final = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
#: The accepted formats as users read them in messages.
ACCEPTED_FORMATS_TEXT: Final = "PNG, JPEG, WebP or BMP"

#: A square side below this is refused: there is no face left to recover in fewer pixels.
MIN_INPUT_SIDE: Final = 8
#: Aspect ratios (longer / shorter side) above this get a `not-square` warning besides the record.
SQUARE_TOLERANCE: Final = 1.25

WarningCode = Literal["upscaled", "larger-than-output", "not-square"]
WARNING_CODES: Final[tuple[WarningCode, ...]] = ("upscaled", "larger-than-output", "not-square")
#: EXIF orientations 2-8 turn or flip the stored pixels; 5-8 swap width and height.
_TURNING_ORIENTATIONS: Final = range(2, 9)
_SWAPPING_ORIENTATIONS: Final = range(5, 9)


class InputTooSmallError(InputImageError):
    """The image (or its square) is below `MIN_INPUT_SIDE` pixels on a side."""


@dataclass(frozen=True)
class InputWarning:
    """Something about the input that makes the result worse than the model can do; `code` is stable."""

    code: WarningCode
    message: str


@dataclass(frozen=True)
class InputTransform:
    """What was done to one input image, in the upright image's pixel coordinates.

    `width` x `height` is the upright image (after EXIF orientation). The square `(x, y, side)` is the
    region that became the model input: inside the image for a crop, reaching past its edges (negative
    x or y, or past the far edge) for a pad.
    """

    width: int
    height: int
    oriented: bool
    fit: Fit | None
    x: int
    y: int
    side: int
    resized_to: int
    warnings: tuple[InputWarning, ...] = ()

    @property
    def resized(self) -> bool:
        return self.side != self.resized_to

    @property
    def changed(self) -> bool:
        """True when the input was not used as it was (turned, made square or resized)."""
        return self.oriented or self.fit is not None or self.resized

    @property
    def resized_from(self) -> tuple[int, int] | None:
        """The upright input's (width, height) when it was not used as it was, else None."""
        return (self.width, self.height) if self.changed else None

    def to_input(self, points: np.ndarray, output_size: int = HR_SIZE) -> np.ndarray:
        """Points in output pixels -> the same points in the upright input's pixels.

        Both are 0-based pixel centres: output pixel p covers [p - 0.5, p + 0.5), so its centre maps to
        x + (p + 0.5) * side / output_size - 0.5.

        Args:
            points: N x 2 (x, y), 0 <= x, y < output_size.
            output_size: side of the output the points are in (`HR_SIZE`, 128).

        Returns:
            N x 2 float64 (x, y) in the upright input; outside 0..width/height where the square was padded.
        """
        scale = self.side / output_size
        offset = np.array([self.x, self.y], dtype=np.float64)
        return (np.asarray(points, dtype=np.float64) + 0.5) * scale - 0.5 + offset

    def describe(self) -> str:
        """One header-safe line, e.g. 'crop 0,500 2000x2000; resize 2000->16 bicubic'."""
        parts = []
        if self.oriented:
            parts.append("exif-orientation")
        if self.fit is not None:
            parts.append(f"{self.fit} {self.x},{self.y} {self.side}x{self.side}")
        if self.resized:
            parts.append(f"resize {self.side}->{self.resized_to} bicubic")
        return "; ".join(parts) or "none"

    def as_dict(self) -> dict[str, object]:
        """JSON-ready record (warnings as {code, message} objects)."""
        record = asdict(self)
        record["resized"] = self.resized
        return record


@dataclass(frozen=True)
class PreparedFace:
    """The model input made from one image, and how it was made."""

    lr_rgb: np.ndarray  # size x size x 3 uint8 RGB
    transform: InputTransform


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1-8), 1 when absent or not a valid value; reads no pixel data."""
    orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    return orientation if orientation in _TURNING_ORIENTATIONS else 1


def upright_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) once the EXIF orientation is applied, from the header alone."""
    width, height = image.size
    return (height, width) if exif_orientation(image) in _SWAPPING_ORIENTATIONS else (width, height)


def upright(image: Image.Image) -> tuple[Image.Image, bool]:
    """Apply the EXIF orientation; returns the image and whether it turned or flipped it."""
    if exif_orientation(image) == 1:
        return image, False
    return ImageOps.exif_transpose(image), True


def square_region(width: int, height: int, fit: Fit) -> tuple[int, int, int]:
    """(x, y, side) of the centred square: inside the image for 'crop', around it for 'pad'."""
    side = min(width, height) if fit == "crop" else max(width, height)
    return (width - side) // 2, (height - side) // 2, side


def _to_square(rgb: np.ndarray, x: int, y: int, side: int) -> np.ndarray:
    height, width = rgb.shape[:2]
    if x >= 0 and y >= 0:
        return rgb[y : y + side, x : x + side]
    pad_y, pad_x = -min(y, 0), -min(x, 0)
    return np.pad(rgb, ((pad_y, side - height - pad_y), (pad_x, side - width - pad_x), (0, 0)), mode="edge")


def _warnings(
    width: int, height: int, fit: Fit, side: int, size: int, output_size: int
) -> tuple[InputWarning, ...]:
    found: list[InputWarning] = []
    if max(width, height) > SQUARE_TOLERANCE * min(width, height):
        done = (
            f"only the centred {side}x{side} square was used"
            if fit == "crop"
            else f"it was padded to a {side}x{side} square by repeating its edge pixels"
        )
        found.append(
            InputWarning(
                "not-square",
                f"the image is {width}x{height}; {done} (a square face crop gives the best result)",
            )
        )
    if side < size:
        found.append(
            InputWarning(
                "upscaled",
                f"the face is {side}x{side}, smaller than the model's {size}x{size} input; it was enlarged "
                f"with bicubic, so the result is softer than a real {size}x{size} face gives",
            )
        )
    elif side >= output_size:
        found.append(
            InputWarning(
                "larger-than-output",
                f"the face is {side}x{side}, already at least the {output_size}x{output_size} output; it "
                f"was shrunk to {size}x{size} first, so the result has less detail than the input",
            )
        )
    return tuple(found)


def refuse_too_small(width: int, height: int) -> None:
    """Raise `InputTooSmallError` when the shorter side is below `MIN_INPUT_SIDE` (any orientation)."""
    if min(width, height) < MIN_INPUT_SIDE:
        raise InputTooSmallError(
            f"the image is {width}x{height}; faces need at least {MIN_INPUT_SIDE}x{MIN_INPUT_SIDE} pixels"
        )


def plan_transform(
    width: int,
    height: int,
    *,
    fit: Fit = DEFAULT_FIT,
    size: int = LR_SIZE,
    output_size: int = HR_SIZE,
    oriented: bool = False,
) -> InputTransform:
    """What the policy does to an upright image of `width` x `height` pixels (no pixel is needed).

    Raises:
        InputTooSmallError: the shorter side is below `MIN_INPUT_SIDE`.
        ValueError: an unknown fit.
    """
    if fit not in FITS:
        raise ValueError(f"fit must be one of {', '.join(FITS)}, got {fit!r}")
    refuse_too_small(width, height)
    x, y, side = square_region(width, height, fit)
    return InputTransform(
        width=width,
        height=height,
        oriented=oriented,
        fit=None if width == height else fit,
        x=x,
        y=y,
        side=side,
        resized_to=size,
        warnings=_warnings(width, height, fit, side, size, output_size),
    )


def prepare_face(
    image: Image.Image | np.ndarray,
    *,
    fit: Fit = DEFAULT_FIT,
    size: int = LR_SIZE,
    output_size: int = HR_SIZE,
    oriented: bool = False,
) -> PreparedFace:
    """Any face image -> the model input, following the policy above.

    Args:
        image: an upright PIL image (any mode; alpha composited on black) or a uint8 array (H x W gray,
            H x W x 3 RGB or H x W x 4 RGBA). Files are read with `facesr.model.image_file`.
        fit: 'crop' or 'pad' for a non-square image.
        size: side of the model input (`LR_SIZE`, 16); output_size: side of its output (`HR_SIZE`, 128).
        oriented: recorded as given (whether the EXIF orientation turned the image).

    Returns:
        The size x size x 3 uint8 RGB face and its `InputTransform`.

    Raises:
        InputTooSmallError: the shorter side is below `MIN_INPUT_SIDE`.
        ValueError: an unknown fit.
    """
    rgb_image = as_rgb_image(image)
    width, height = rgb_image.size
    transform = plan_transform(width, height, fit=fit, size=size, output_size=output_size, oriented=oriented)
    x, y, side = transform.x, transform.y, transform.side
    square = rgb_image if width == height else Image.fromarray(_to_square(np.asarray(rgb_image), x, y, side))
    lr = np.array(square, dtype=np.uint8) if side == size else make_lr(square, size)
    return PreparedFace(lr_rgb=lr, transform=transform)

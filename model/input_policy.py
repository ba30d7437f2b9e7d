"""The input policy: what is done to a face image of any size before the model sees it (numpy and PIL).

The API and `facesr enhance` both follow it; docs/input-policy.md states it for users.

1. Formats: PNG, JPEG, WebP and BMP (`ACCEPTED_FORMATS`), recognised by their content; files with
   `ACCEPTED_SUFFIXES` are what a folder contributes to `facesr enhance`.
2. Orientation: the EXIF orientation is applied first (a phone photo's face is upright).
3. Shape: the aspect ratio is never distorted. A non-square image is centre-cropped to a square
   (`fit="crop"`, the default: the model was trained on tight square face crops) or padded to one by
   repeating its edge pixels (`fit="pad"`: nothing is cut off, but the face fills less of the frame).
4. Size: the square is resized to 16 x 16 with `make_lr` (PIL bicubic, antialiased), the way the
   training LR faces were made. A square side below `MIN_INPUT_SIDE` is refused (`InputTooSmallError`);
   a side below 16 is enlarged and one of at least 128 (the output size) is shrunk, each with a
   warning (`InputWarning`), because the result is then softer than the input or than a real 16 x 16
   face would give. Every step taken is recorded in `InputTransform`.

Landmarks come back in output pixels (0..128); `InputTransform.to_input` maps them onto the upload.
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

    The square `(x, y, side)` is the region that became the model input: inside the image for a crop,
    reaching past its edges (negative x or y, or past the far edge) for a pad.
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

    def to_input(self, points: np.ndarray, output_size: int = HR_SIZE) -> np.ndarray:
        """Points in output pixels (N x 2, x then y, 0..output_size) -> pixels of the upright input."""
        scale = self.side / output_size
        return np.asarray(points, dtype=np.float64) * scale + np.array([self.x, self.y], dtype=np.float64)

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


def upright(image: Image.Image) -> tuple[Image.Image, bool]:
    """Apply the EXIF orientation; returns the image and whether it turned or flipped it."""
    orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    if orientation in (1, None):
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
            H x W x 3 RGB or H x W x 4 RGBA). Apply `upright` to a decoded file first.
        fit: 'crop' or 'pad' for a non-square image.
        size: side of the model input (`LR_SIZE`, 16); output_size: side of its output (`HR_SIZE`, 128).
        oriented: recorded as given (whether `upright` turned the image).

    Returns:
        The size x size x 3 uint8 RGB face and its `InputTransform`.

    Raises:
        InputTooSmallError: the square's side would be below `MIN_INPUT_SIDE`.
        ValueError: an unknown fit.
    """
    if fit not in FITS:
        raise ValueError(f"fit must be one of {', '.join(FITS)}, got {fit!r}")
    rgb_image = as_rgb_image(image)
    width, height = rgb_image.size
    if min(width, height) < MIN_INPUT_SIDE:
        raise InputTooSmallError(
            f"the image is {width}x{height}; faces need at least {MIN_INPUT_SIDE}x{MIN_INPUT_SIDE} pixels"
        )
    x, y, side = square_region(width, height, fit)
    square = rgb_image if width == height else Image.fromarray(_to_square(np.asarray(rgb_image), x, y, side))
    lr = np.array(square, dtype=np.uint8) if side == size else make_lr(square, size)
    transform = InputTransform(
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
    return PreparedFace(lr_rgb=lr, transform=transform)

"""Reading one image file into the model input, the same way for the API and `facesr enhance` (PIL only).

1. `open_image`: the header only (no pixel is decoded). The content decides the format, which must be one
   of the input policy's `ACCEPTED_FORMATS`. A JPEG carrying multi-picture data (MPO: many cameras and
   phones write it) counts as the JPEG it is.
2. `decode_face`: the first frame is decoded. A JPEG far larger than the model needs is decoded at a
   reduced scale inside the JPEG decoder (see `JPEG_DRAFT_MIN_SIDE`). Then the input policy is applied
   (`facesr.model.input_policy`); its record is in the full-size upright image's pixels, however the
   file was decoded.

Errors are `InputImageError`s: `NotAnImageError`, `UnsupportedFormatError` (an image in a refused
format), `DamagedImageError`, and the policy's `InputTooSmallError`. PIL's own message is kept as the
exception's cause; the messages here are the project's own words.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

import numpy as np
from PIL import Image, UnidentifiedImageError

from facesr.model.config import HR_SIZE, LR_SIZE
from facesr.model.errors import InputImageError
from facesr.model.input_policy import (
    ACCEPTED_FORMATS,
    ACCEPTED_FORMATS_TEXT,
    DEFAULT_FIT,
    Fit,
    InputTransform,
    exif_orientation,
    plan_transform,
    prepare_face,
    refuse_too_small,
    upright,
    upright_size,
)

#: PIL format names that are one of the accepted formats under another name.
_SAME_FORMAT: Final = {"MPO": "JPEG"}
#: A JPEG whose shorter side is at least twice this is decoded at a reduced scale (1/2, 1/4 or 1/8, done
#: inside the JPEG decoder), keeping the shorter side at or above it. The model needs 16 px; faces up to
#: twice this size decode exactly as in training, where LR faces are made from 128 px crops.
JPEG_DRAFT_MIN_SIDE: Final = 256

ImageSource = bytes | Path | BinaryIO


class NotAnImageError(InputImageError):
    """The file is not recognisable as an image at all."""


class UnsupportedFormatError(InputImageError):
    """An image, but in a format the policy does not accept (GIF, TIFF, ...)."""

    def __init__(self, found: str) -> None:
        super().__init__(f"{found} images are not accepted; send {ACCEPTED_FORMATS_TEXT}")
        self.found = found


class DamagedImageError(InputImageError):
    """The header was readable but the image data is truncated or corrupt."""


@dataclass(frozen=True)
class DecodedFace:
    """One file made into the model input.

    format: the accepted format it was read as ('PNG', 'JPEG', 'WEBP' or 'BMP').
    stored_size: (width, height) as stored in the file, before EXIF orientation.
    lr_rgb: size x size x 3 uint8 RGB, the model input.
    transform: what the input policy did, in the full-size upright image's pixels.
    """

    format: str
    stored_size: tuple[int, int]
    lr_rgb: np.ndarray
    transform: InputTransform


def image_format(image: Image.Image) -> str:
    """The accepted format name of an opened image (MPO is JPEG), or its own name when refused."""
    found = str(image.format)
    return _SAME_FORMAT.get(found, found)


def _as_stream(source: ImageSource) -> BinaryIO | Path:
    return io.BytesIO(source) if isinstance(source, bytes) else source


def open_image(source: ImageSource) -> Image.Image:
    """Open an image file's header (no pixel is decoded) and check its format.

    PIL's decompression-bomb warning is silenced: callers check the size against their own, stricter
    limits; PIL's hard limit (`Image.DecompressionBombError`) still applies and is left to the caller.

    Raises:
        UnsupportedFormatError: an image in a refused format.
        NotAnImageError: no image at all.
        DamagedImageError: an accepted format whose header is incomplete or corrupt.
        OSError: the file cannot be read (missing, permission denied).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(_as_stream(source), formats=ACCEPTED_FORMATS)
        except UnidentifiedImageError:
            raise _unidentified(source) from None
        except (Image.DecompressionBombError, FileNotFoundError, PermissionError, IsADirectoryError):
            raise
        except (OSError, SyntaxError, ValueError, EOFError) as error:
            raise DamagedImageError("the image header is incomplete or corrupt") from error
    if image_format(image) not in ACCEPTED_FORMATS:  # a plugin that answers for an accepted one
        image.close()
        raise UnsupportedFormatError(image_format(image))
    return image


def _unidentified(source: ImageSource) -> InputImageError:
    """Tell 'an image in a format we refuse' from 'not an image', still header-only."""
    if isinstance(source, io.IOBase):
        source.seek(0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(_as_stream(source)) as image:
                found = image.format
    except Exception:
        found = None
    if found:
        return UnsupportedFormatError(found)
    return NotAnImageError(f"not a {ACCEPTED_FORMATS_TEXT} image")


def _draft_large_jpeg(image: Image.Image) -> None:
    """Ask the JPEG decoder for a reduced scale when the image is far larger than the model needs."""
    width, height = image.size
    shorter = min(width, height)
    if image_format(image) != "JPEG" or shorter < 2 * JPEG_DRAFT_MIN_SIDE:
        return
    scale = JPEG_DRAFT_MIN_SIDE / shorter
    image.draft("RGB", (max(1, round(width * scale)), max(1, round(height * scale))))


def decode_face(
    source: ImageSource,
    *,
    fit: Fit = DEFAULT_FIT,
    size: int = LR_SIZE,
    output_size: int = HR_SIZE,
) -> DecodedFace:
    """Decode an image file's first frame and apply the input policy (CPU-bound).

    Args:
        source: the file's bytes, a path, or an open binary file.
        fit, size, output_size: as for `facesr.model.input_policy.prepare_face`.

    Raises:
        The errors of `open_image`, `DamagedImageError` for truncated data, and `InputTooSmallError`.
    """
    with open_image(source) as image:
        found = image_format(image)
        stored = image.size
        refuse_too_small(*stored)  # before any pixel is decoded (a PNG's EXIF may come after its pixels)
        try:
            full_width, full_height = upright_size(image)
            oriented = exif_orientation(image) != 1
            # The record is the full-size image's, however small the decoder is asked to make it.
            transform = plan_transform(
                full_width, full_height, fit=fit, size=size, output_size=output_size, oriented=oriented
            )
            _draft_large_jpeg(image)
            image.load()
            turned, _ = upright(image)
            prepared = prepare_face(turned, fit=fit, size=size, output_size=output_size, oriented=oriented)
        except InputImageError:
            raise
        except (OSError, SyntaxError, ValueError, EOFError, struct.error) as error:
            raise DamagedImageError("the image data is truncated or corrupt") from error
    return DecodedFace(format=found, stored_size=stored, lr_rgb=prepared.lr_rgb, transform=transform)

"""Uploads in, images out: validation and decoding of untrusted files, and encoding of results.

Order of checks for an upload (each failure is a `ServiceError` with its own status):
1. declared part type: anything but `image/*` or a generic binary type is refused (415);
2. bytes: empty (400) or more than the limit (413) — the body itself is capped while it is read;
3. header only (`Image.open` reads no pixel data): the format must be one of the input policy's
   `ACCEPTED_FORMATS` (415, or 400 when it is no image at all) and width x height within the pixel limit
   (413), so a tiny file announcing 100000 x 100000 pixels is refused before a single pixel is decoded;
4. full decode of the first frame (truncated or corrupt data -> 400), then the input policy
   (`facesr.model.input_policy`: EXIF orientation, centre crop or padding to a square, PIL bicubic to
   16 x 16, alpha on black); a face below its minimum side is refused (422).

Pixel conventions: results are 128 x 128 x 3 uint8 RGB arrays, row-major HWC.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import logging
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from facesr.model.input_policy import (
    ACCEPTED_FORMATS,
    ACCEPTED_FORMATS_TEXT,
    DEFAULT_FIT,
    Fit,
    InputTooSmallError,
    InputTransform,
    prepare_face,
    upright,
)
from facesr.service.errors import (
    FaceTooSmallError,
    ImageTooLargeError,
    PayloadTooLargeError,
    UndecodableImageError,
    UnsupportedMediaTypeError,
)

log = logging.getLogger(__name__)

OutputFormat = Literal["png", "jpeg", "webp"]

# Part types a client may declare for an image; curl and browsers send octet-stream for unknown files.
_GENERIC_PART_TYPES: Final = frozenset({"", "application/octet-stream", "binary/octet-stream"})
OUTPUT_MEDIA_TYPES: Final[dict[str, str]] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


@dataclass(frozen=True)
class ImageHeader:
    """What the file says about itself before any pixel is decoded."""

    format: str
    width: int
    height: int


@dataclass(frozen=True)
class DecodedUpload:
    """A validated upload turned into the model input.

    `lr_rgb` is the 16 x 16 x 3 uint8 RGB face; `transform` what the input policy did to the upload.
    """

    header: ImageHeader
    lr_rgb: np.ndarray
    transform: InputTransform

    @property
    def resized_from(self) -> tuple[int, int] | None:
        """The upright upload's (width, height) when it was not already the model's input, else None."""
        changed = self.transform.fit is not None or self.transform.resized
        return (self.transform.width, self.transform.height) if changed else None


def check_part_type(content_type: str | None) -> None:
    """Refuse a multipart part whose declared type is neither an image nor generic binary (415)."""
    declared = (content_type or "").split(";", 1)[0].strip().lower()
    if declared in _GENERIC_PART_TYPES or declared.startswith("image/"):
        return
    raise UnsupportedMediaTypeError(
        f"the image part is declared as {declared!r}; send a {ACCEPTED_FORMATS_TEXT} image"
    )


def check_size(data: bytes, max_bytes: int) -> None:
    """Refuse empty (400) and oversized (413) uploads."""
    if not data:
        raise UndecodableImageError("the uploaded file is empty")
    if len(data) > max_bytes:
        raise PayloadTooLargeError(f"the uploaded file has {len(data)} bytes; the limit is {max_bytes}")


def _open_header(data: bytes, formats: tuple[str, ...] | None) -> Image.Image:
    # Image.open parses the header only. Its own decompression-bomb warning is irrelevant here
    # because the caller checks the pixel count against a stricter limit right away.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data), formats=formats)


def read_header(data: bytes, max_pixels: int) -> ImageHeader:
    """Identify the format and dimensions from the header, without decoding pixels.

    Raises:
        UnsupportedMediaTypeError: an image, but not one of `ACCEPTED_FORMATS`.
        UndecodableImageError: not recognisable as an image.
        ImageTooLargeError: width x height above `max_pixels` (or above PIL's own bomb limit).
    """
    try:
        image = _open_header(data, ACCEPTED_FORMATS)
    except Image.DecompressionBombError as error:
        _log_decoder_error("header", error)
        raise ImageTooLargeError(
            f"the image header announces far more pixels than the limit of {max_pixels}"
        ) from error
    except UnidentifiedImageError:
        raise _unidentified(data) from None
    except Exception as error:
        _log_decoder_error("header", error)
        raise UndecodableImageError("the image header is incomplete or corrupt") from error
    with image:
        width, height = image.size
        header = ImageHeader(format=str(image.format), width=width, height=height)
    if width < 1 or height < 1:
        raise UndecodableImageError(f"the image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"the image is {width}x{height} = {width * height} pixels; the limit is {max_pixels} "
            "(faces only need 16x16)"
        )
    return header


def _unidentified(data: bytes) -> UnsupportedMediaTypeError | UndecodableImageError:
    """Tell 'an image in a format we refuse' (415) from 'not an image' (400), still header-only."""
    try:
        with _open_header(data, None) as image:
            found = image.format
    except Exception:
        found = None
    if found:
        return UnsupportedMediaTypeError(f"{found} images are not accepted; send {ACCEPTED_FORMATS_TEXT}")
    return UndecodableImageError(f"the upload is not a {ACCEPTED_FORMATS_TEXT} image")


def _log_decoder_error(stage: str, error: BaseException) -> None:
    """Keep the decoder's own message for the server log only.

    PIL's messages name its internals (exception classes, buffer objects and their addresses); a client
    gets the service's own wording instead.
    """
    message = str(error).strip()
    described = f"{type(error).__name__}: {message}" if message else type(error).__name__
    log.info("upload refused, the image %s could not be decoded: %s", stage, described)


class PixelBudget:
    """The pixels one request may still have decoded; the images of a batch draw on it (thread-safe)."""

    def __init__(self, pixels: int) -> None:
        self._left = pixels
        self._lock = threading.Lock()

    def take(self, header: ImageHeader) -> None:
        """Reserve ``header``'s pixels, or refuse the image (413) when the request's budget is spent."""
        pixels = header.width * header.height
        with self._lock:
            if pixels > self._left:
                raise ImageTooLargeError(
                    f"this image ({header.width}x{header.height}) would exceed the request's pixel budget "
                    f"({self._left} pixels left); send fewer or smaller images per request"
                )
            self._left -= pixels


def decode_upload(
    data: bytes,
    *,
    max_bytes: int,
    max_pixels: int,
    budget: PixelBudget | None = None,
    fit: Fit = DEFAULT_FIT,
) -> DecodedUpload:
    """Validate and decode one uploaded file into the 16 x 16 model input (CPU-bound: run in a thread).

    Animated files use their first frame. The input policy is applied (`prepare_face`: EXIF orientation,
    ``fit`` to a square, bicubic to 16 x 16, alpha on black). The header is checked (size, pixel limit,
    the request's ``budget``) before any pixel is decoded, and a large JPEG is decoded at a reduced
    scale (see `JPEG_DRAFT_MIN_SIDE`); the transform's coordinates are those of the full-size image.

    Raises:
        FaceTooSmallError (422) besides the header and decoding errors above.
    """
    check_size(data, max_bytes)
    header = read_header(data, max_pixels)
    if budget is not None:
        budget.take(header)
    try:
        with _open_header(data, ACCEPTED_FORMATS) as image:
            scale = _draft_large_jpeg(image)
            image.load()
            turned, oriented = upright(image)
            prepared = prepare_face(turned, fit=fit, oriented=oriented)
    except InputTooSmallError as error:
        raise FaceTooSmallError(str(error)) from None
    except (ImageTooLargeError, UndecodableImageError):
        raise
    except Exception as error:
        _log_decoder_error("data", error)
        raise UndecodableImageError("the image data is truncated or corrupt") from error
    return DecodedUpload(header=header, lr_rgb=prepared.lr_rgb, transform=scale(prepared.transform))


#: A JPEG whose shorter side is at least twice this is decoded at a reduced scale (1/2, 1/4 or 1/8, done
#: inside the JPEG decoder), keeping the shorter side at or above it. The model needs 16 px; faces up to
#: twice this size decode exactly as in training, where LR faces are made from 128 px crops.
JPEG_DRAFT_MIN_SIDE: Final = 256


def _draft_large_jpeg(image: Image.Image) -> Callable[[InputTransform], InputTransform]:
    """Ask the JPEG decoder for a reduced scale when the image is far larger than the model needs.

    Returns what turns a transform measured on the decoded image back into full-size coordinates.
    """
    width, height = image.size
    shorter = min(width, height)
    if image.format != "JPEG" or shorter < 2 * JPEG_DRAFT_MIN_SIDE:
        return _unchanged
    scale = JPEG_DRAFT_MIN_SIDE / shorter
    image.draft("RGB", (max(1, round(width * scale)), max(1, round(height * scale))))
    factor = width / image.size[0]
    if factor == 1:
        return _unchanged
    return functools.partial(_scaled_transform, factor=factor)


def _unchanged(transform: InputTransform) -> InputTransform:
    return transform


def _scaled_transform(transform: InputTransform, *, factor: float) -> InputTransform:
    """A transform measured on a JPEG decoded at 1/factor scale, in the full-size image's pixels.

    The warnings stay as measured: a face that was decoded at a reduced scale was larger still.
    """
    return dataclasses.replace(
        transform,
        width=round(transform.width * factor),
        height=round(transform.height * factor),
        x=round(transform.x * factor),
        y=round(transform.y * factor),
        side=round(transform.side * factor),
    )


def encode_image(rgb: np.ndarray, output_format: OutputFormat, *, quality: int = 95) -> bytes:
    """Encode an `H x W x 3` uint8 RGB array as PNG (lossless), JPEG or WebP (lossy, `quality` 1-100)."""
    image = Image.fromarray(np.ascontiguousarray(rgb))
    buffer = io.BytesIO()
    if output_format == "png":
        image.save(buffer, format="PNG", compress_level=3)
    elif output_format == "jpeg":
        image.save(buffer, format="JPEG", quality=quality)
    elif output_format == "webp":
        image.save(buffer, format="WEBP", quality=quality, method=4)
    else:
        raise ValueError(f"unknown output format {output_format!r}")
    return buffer.getvalue()

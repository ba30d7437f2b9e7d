"""Uploads in, images out: validation and decoding of untrusted files, and encoding of results.

Order of checks for an upload (each failure is a `ServiceError` with its own status):
1. declared part type: anything but `image/*` or a generic binary type is refused (415);
2. bytes: empty (400) or more than the limit (413) — the body itself is capped while it is read;
3. header only (`Image.open` reads no pixel data): the format must be one of the input policy's
   `ACCEPTED_FORMATS` (415, or 400 when it is no image at all) and width x height within the pixel limit
   (413), so a tiny file announcing 100000 x 100000 pixels is refused before a single pixel is decoded;
4. the image below 8 px on its shorter side is refused (422), still from the header;
5. full decode of the first frame and the input policy, by the same code as `facesr enhance`
   (`facesr.model.image_file`: large JPEGs at a reduced scale, EXIF orientation, centre crop or padding
   to a square, PIL bicubic to 16 x 16, alpha on black); truncated or corrupt data -> 400.

Pixel conventions: results are 128 x 128 x 3 uint8 RGB arrays, row-major HWC.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
from PIL import Image

from facesr.model.errors import InputImageError
from facesr.model.image_file import (
    DamagedImageError,
    UnsupportedFormatError,
    decode_face,
    image_format,
    open_image,
)
from facesr.model.input_policy import (
    ACCEPTED_FORMATS_TEXT,
    DEFAULT_FIT,
    Fit,
    InputTooSmallError,
    InputTransform,
    refuse_too_small,
)
from facesr.service.errors import (
    FaceTooSmallError,
    ImageTooLargeError,
    PayloadTooLargeError,
    ServiceError,
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
    """What the file says about itself before any pixel is decoded (width x height as stored)."""

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
        """The upright upload's (width, height) when it was not used as it was, else None."""
        return self.transform.resized_from


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


@contextmanager
def _as_service_errors(stage: str, max_pixels: int) -> Iterator[None]:
    """The model package's image errors as the service's (one place decides their HTTP status)."""
    try:
        yield
    except ServiceError:
        raise
    except UnsupportedFormatError as error:
        raise UnsupportedMediaTypeError(str(error)) from None
    except InputTooSmallError as error:
        raise FaceTooSmallError(str(error)) from None
    except Image.DecompressionBombError as error:
        _log_decoder_error(stage, error)
        raise ImageTooLargeError(
            f"the image header announces far more pixels than the limit of {max_pixels}"
        ) from error
    except DamagedImageError as error:
        _log_decoder_error(stage, error.__cause__ or error)
        raise UndecodableImageError(str(error)) from error
    except InputImageError as error:  # not an image at all
        raise UndecodableImageError(str(error)) from None
    except Exception as error:
        _log_decoder_error(stage, error)
        raise UndecodableImageError(f"the image {stage} is truncated or corrupt") from error


def read_header(data: bytes, max_pixels: int) -> ImageHeader:
    """Identify the format and dimensions from the header, without decoding pixels.

    Raises:
        UnsupportedMediaTypeError: an image, but not one of the accepted formats.
        UndecodableImageError: not recognisable as an image.
        ImageTooLargeError: width x height above `max_pixels` (or above PIL's own bomb limit).
        FaceTooSmallError: the shorter side is below the input policy's minimum.
    """
    with _as_service_errors("header", max_pixels), open_image(data) as image:
        width, height = image.size
        header = ImageHeader(format=image_format(image), width=width, height=height)
    if width < 1 or height < 1:
        raise UndecodableImageError(f"the image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"the image is {width}x{height} = {width * height} pixels; the limit is {max_pixels} "
            "(faces only need 16x16)"
        )
    with _as_service_errors("header", max_pixels):
        refuse_too_small(width, height)  # before decoding; turning the image changes no side length
    return header


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

    The header is checked (size, pixel limit, the request's ``budget``, the policy's minimum size)
    before any pixel is decoded; then `facesr.model.image_file.decode_face` decodes the first frame and
    applies the input policy with ``fit``, as `facesr enhance` does.
    """
    check_size(data, max_bytes)
    header = read_header(data, max_pixels)
    if budget is not None:
        budget.take(header)
    with _as_service_errors("data", max_pixels):
        face = decode_face(data, fit=fit)
    return DecodedUpload(header=header, lr_rgb=face.lr_rgb, transform=face.transform)


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

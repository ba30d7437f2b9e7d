"""Turning what a caller passes as an image into one multipart file part."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import numpy as np
from PIL import Image

#: What the client accepts as an image: a file path, the file's bytes, a PIL image, or a uint8 array
#: (H x W gray, H x W x 3 RGB or H x W x 4 RGBA).
ImageInput: TypeAlias = "str | os.PathLike[str] | bytes | bytearray | memoryview | Image.Image | np.ndarray"

_SIGNATURES: tuple[tuple[bytes, str, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png", ".png"),
    (b"\xff\xd8\xff", "image/jpeg", ".jpg"),
    (b"BM", "image/bmp", ".bmp"),
)
_GENERIC = "application/octet-stream"


@dataclass(frozen=True)
class Upload:
    """One file part: its name, content and declared media type (the service checks the content)."""

    filename: str
    content: bytes
    media_type: str

    def part(self) -> tuple[str, bytes, str]:
        return (self.filename, self.content, self.media_type)


def sniff(content: bytes) -> tuple[str, str]:
    """(media type, file suffix) from the first bytes; octet-stream for anything unrecognised."""
    if content[:4] == b"RIFF" and content[8:12] == b"WEBP":
        return "image/webp", ".webp"
    for magic, media_type, suffix in _SIGNATURES:
        if content.startswith(magic):
            return media_type, suffix
    return _GENERIC, ""


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _array_image(array: np.ndarray) -> Image.Image:
    if array.dtype != np.uint8:
        raise TypeError(f"an image array must be uint8 (0..255), got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4)):
        return Image.fromarray(np.ascontiguousarray(array))  # L, RGB or RGBA from the shape
    raise ValueError(f"an image array must be H x W, H x W x 3 (RGB) or H x W x 4 (RGBA), got {array.shape}")


def to_upload(image: ImageInput, *, name: str = "image") -> Upload:
    """One upload from a path, encoded bytes, a PIL image or a uint8 numpy array.

    Paths and bytes are sent as they are (the service decodes PNG, JPEG, WebP and BMP and applies the
    EXIF orientation); PIL images and arrays are encoded as PNG, losslessly. `name` (without suffix)
    names the part when the input has no file name of its own.

    Raises:
        TypeError: an unsupported type, or an array that is not uint8.
        ValueError: an array of another shape.
        OSError: the path cannot be read.
    """
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        content = path.read_bytes()
        return Upload(path.name, content, sniff(content)[0])
    if isinstance(image, (bytes, bytearray, memoryview)):
        content = bytes(image)
        media_type, suffix = sniff(content)
        return Upload(name + suffix, content, media_type)
    if isinstance(image, Image.Image):
        if image.mode not in ("RGB", "RGBA", "L", "LA", "P", "1", "I;16"):
            image = image.convert("RGB")
        return Upload(name + ".png", _png(image), "image/png")
    if isinstance(image, np.ndarray):
        return Upload(name + ".png", _png(_array_image(image)), "image/png")
    raise TypeError(
        "an image is a path, bytes, a PIL image or a uint8 numpy array, got " + type(image).__name__
    )

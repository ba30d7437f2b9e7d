"""Turning face images into the model's input, the way the model was trained (numpy and PIL only).

The two image conventions every other module uses:

* `make_lr`: an HR face -> the LR face. PIL bicubic, which antialiases when it shrinks; the
  training samples, the evaluation protocol, the validation baseline and the input policy of the API
  and CLI (`facesr.model.input_policy`) all make their LR faces with it, so training and serving see
  the same pixels.
* `bicubic_baseline`: an LR face -> PIL bicubic upscaling back to the HR size (the baseline that every
  score is compared with).

Images are uint8 RGB, H x W x 3 (one face) or N x H x W x 3 (a batch), at the edges of the model.
Sizes default to `facesr.model.config` LR_SIZE (16) and HR_SIZE (128).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from facesr.model.config import HR_SIZE, LR_SIZE
from facesr.model.errors import InputImageError

#: The resampling filter of the training degradation and of the baseline.
BICUBIC = Image.Resampling.BICUBIC


def as_rgb_image(image: Image.Image | np.ndarray) -> Image.Image:
    """A PIL image or uint8 array (gray, RGB or RGBA) -> a PIL RGB image (alpha composited on black)."""
    if isinstance(image, Image.Image):
        if image.mode == "RGB":
            return image
        if image.mode in _WIDE_GRAY_MODES:
            return _wide_gray_to_rgb(image)
        if image.mode in ("RGBA", "LA", "P", "PA") or "transparency" in image.info:
            # Composite transparent pixels on black, matching how RGB conversion treats them elsewhere.
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return image.convert("RGB")
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise InputImageError(f"image arrays must be uint8, got {array.dtype}")
    if array.ndim == 2:
        return Image.fromarray(array, mode="L").convert("RGB")
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise InputImageError(f"image arrays must be H x W, H x W x 3 or H x W x 4, got shape {array.shape}")
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise InputImageError(f"image has no pixels: shape {array.shape}")
    if array.shape[2] == 4:
        return as_rgb_image(Image.fromarray(np.ascontiguousarray(array), mode="RGBA"))
    return Image.fromarray(np.ascontiguousarray(array), mode="RGB")


#: Gray modes with more than 8 bits per pixel (16-bit PNGs open as one of them).
_WIDE_GRAY_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})


def _wide_gray_to_rgb(image: Image.Image) -> Image.Image:
    """A 16-bit gray image -> RGB, scaled to 8 bits (PIL's own conversion clips it to white)."""
    wide = np.asarray(image, dtype=np.float64)
    gray = np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8)  # 65535 -> 255
    return Image.fromarray(gray, mode="L").convert("RGB")


def _resize_faces(images: np.ndarray | Image.Image, size: int, resample: Image.Resampling) -> np.ndarray:
    """One face (PIL image or H x W x 3 uint8) or a batch (N x H x W x 3 uint8) -> size x size faces."""
    if size < 1:
        raise ValueError(f"target size must be at least 1 pixel, got {size}")
    if isinstance(images, Image.Image):
        rgb = as_rgb_image(images)
        return np.array(rgb.resize((size, size), resample=resample), dtype=np.uint8)
    array = np.asarray(images)
    if array.dtype != np.uint8 or array.ndim not in (3, 4) or array.shape[-1] != 3:
        raise InputImageError(
            f"faces must be H x W x 3 or N x H x W x 3 uint8 RGB, got shape {array.shape} {array.dtype}"
        )
    if array.ndim == 3:
        return _resize_faces(as_rgb_image(array), size, resample)
    faces = np.empty((array.shape[0], size, size, 3), dtype=np.uint8)
    for index, face in enumerate(array):
        faces[index] = _resize_faces(as_rgb_image(face), size, resample)
    return faces


def make_lr(
    hr: np.ndarray | Image.Image,
    size: int = LR_SIZE,
    *,
    resample: Image.Resampling = BICUBIC,
) -> np.ndarray:
    """The training degradation: an HR face resized to the LR size with PIL bicubic (antialiased).

    Args:
        hr: one face (H x W x 3 uint8 RGB array, or a PIL image of any mode, composited on black if it
            has alpha) or a batch (N x H x W x 3 uint8 RGB); 128 x 128 in training and evaluation.
        size: side of the LR face (default `LR_SIZE`, 16).
        resample: the PIL filter; anything but bicubic is a deliberately shifted input distribution
            (robustness evaluation only).

    Returns:
        size x size x 3 uint8 RGB, or N x size x size x 3 for a batch.
    """
    return _resize_faces(hr, size, resample)


def bicubic_baseline(lr: np.ndarray | Image.Image, size: int = HR_SIZE) -> np.ndarray:
    """The bicubic baseline: an LR face upscaled to the HR size with PIL bicubic.

    Args:
        lr: one face (H x W x 3 uint8 RGB or a PIL image) or a batch (N x H x W x 3 uint8 RGB).
        size: side of the output (default `HR_SIZE`, 128).

    Returns:
        size x size x 3 uint8 RGB, or N x size x size x 3 for a batch.
    """
    return _resize_faces(lr, size, BICUBIC)

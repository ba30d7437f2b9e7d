"""Turning any face image into the model's 16 x 16 input, the way the model was trained."""

from __future__ import annotations

import numpy as np
from PIL import Image

from facesr.model.errors import InputImageError

LR_SIZE = 16


def as_rgb_image(image: Image.Image | np.ndarray) -> Image.Image:
    """A PIL image or uint8 array (gray, RGB or RGBA) -> a PIL RGB image (alpha composited on black)."""
    if isinstance(image, Image.Image):
        if image.mode == "RGB":
            return image
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


def to_lr_face(image: Image.Image | np.ndarray) -> tuple[np.ndarray, tuple[int, int] | None]:
    """Any face image -> the 16 x 16 RGB uint8 model input.

    Images that are not 16 x 16 are resized with PIL bicubic (PIL antialiases when shrinking), which
    is how the training LR images are made from the 128 x 128 HR crops. Alpha is composited on black.

    Returns:
        (16 x 16 x 3 uint8 array, the original (width, height) if it was resized, else None).
    """
    rgb = as_rgb_image(image)
    if rgb.width < 1 or rgb.height < 1:
        raise InputImageError(f"image has no pixels: {rgb.width}x{rgb.height}")
    if rgb.size == (LR_SIZE, LR_SIZE):
        return np.asarray(rgb, dtype=np.uint8).copy(), None
    resized = rgb.resize((LR_SIZE, LR_SIZE), resample=Image.Resampling.BICUBIC)
    return np.asarray(resized, dtype=np.uint8).copy(), rgb.size

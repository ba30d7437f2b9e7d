"""The crop geometry of `facesr prepare`: a square box from a face's landmarks, cut and resized.

Coordinates are pixel centres at integers (0-based), in the photo and in the crop alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from facesr.model.config import HR_SIZE
from facesr.train.annotations import AnnotationError


@dataclass(frozen=True)
class CropRule:
    """How a face box is derived from its landmarks.

    The box is square, `scale` times the larger side of the landmarks' bounding box, centred on that
    bounding box's centre moved down by `shift_y` times the larger side, and resized to `size`.

    Attributes:
        scale: box side / landmark extent (1.25 gives the Helen-style crops of the training set).
        size: output side in pixels.
        shift_y: vertical offset of the box centre, as a fraction of the landmark extent (+ = down).
    """

    scale: float = 1.25
    size: int = HR_SIZE
    shift_y: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"crop scale must be a positive number, got {self.scale}")
        if self.size < 8:
            raise ValueError(f"crop size must be at least 8 pixels, got {self.size}")
        if not math.isfinite(self.shift_y):
            raise ValueError(f"crop shift_y must be finite, got {self.shift_y}")

    def box(self, landmarks: np.ndarray) -> tuple[float, float, float]:
        """Crop box of a face as (centre x, centre y, side), in the photo's pixel-centre coordinates."""
        low, high = landmarks.min(axis=0), landmarks.max(axis=0)
        extent = float(np.max(high - low))
        if extent <= 0.0:
            raise AnnotationError("the landmarks have zero extent")
        centre_x, centre_y = (low + high) / 2.0
        return float(centre_x), float(centre_y + self.shift_y * extent), self.scale * extent


def crop_face(
    image: Image.Image, landmarks: np.ndarray, rule: CropRule
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Cut the face box out of a photo and resize it, padding with black outside the photo.

    Args:
        image: the photo (any mode; converted to RGB).
        landmarks: 68 x 2 (x, y), 0-based photo pixel centres.
        rule: the box rule.

    Returns:
        (crop, crop_landmarks, padded): rule.size x rule.size x 3 uint8 RGB; 68 x 2 float32 (x, y) in
        crop pixels; whether part of the box lay outside the photo.
    """
    centre_x, centre_y, side = rule.box(landmarks)
    out = rule.size
    # Box edges in PIL's continuous coordinates, where pixel i spans [i, i + 1].
    left, top = centre_x + 0.5 - side / 2.0, centre_y + 0.5 - side / 2.0
    # Read a few extra source pixels so the bicubic kernel sees real neighbours at the box edge.
    margin = math.ceil(2.0 * max(1.0, side / out)) + 1
    region = (
        math.floor(left) - margin,
        math.floor(top) - margin,
        math.ceil(left + side) + margin,
        math.ceil(top + side) + margin,
    )
    width, height = image.size
    padded = left < 0 or top < 0 or left + side > width or top + side > height
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    patch = rgb.crop(region)  # PIL fills the area outside the photo with black
    box_in_patch = (left - region[0], top - region[1], left - region[0] + side, top - region[1] + side)
    crop = patch.resize((out, out), Image.Resampling.BICUBIC, box=box_in_patch)
    factor = out / side
    mapped = (landmarks - np.asarray([left, top]) + 0.5) * factor - 0.5
    return np.asarray(crop, dtype=np.uint8), mapped.astype(np.float32), padded

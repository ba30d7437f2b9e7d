"""Geometric augmentation of a face and its 68 landmarks, kept consistent with each other.

Images are H x W x 3 uint8 RGB (128 x 128 here); landmarks are 68 x 2 float32 (x, y) in 0-based
pixel coordinates (pixel centres on integers). Heatmaps are rendered from the transformed landmarks
afterwards, so all three stay consistent by construction.

The Helen setting of the paper: an anisotropic "distortion" crop, a horizontal flip (p = 0.5, with
the left/right landmark swap) and a rot90 with k = 1, 2, 3 each with p = 0.25. Unlike the authors'
loader, the landmarks are rotated too and the flip swaps the two eyes (not the points within each eye).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from facesr.model.landmarks import flip_landmarks

# Landmarks are kept at least this many pixels inside the distortion window.
_WINDOW_MARGIN = 1.0


@dataclass(frozen=True)
class AugmentParams:
    """One draw of the augmentation: what `apply_augmentation` does to a sample.

    Attributes:
        window: (left, top, right, bottom) of the distortion crop in continuous image coordinates
            (pixel i covers [i, i + 1)), resized back to the full square; the full image when no
            distortion is applied.
        hflip: mirror left/right (after the crop).
        rot90: number of counter-clockwise quarter turns (0-3), applied last.
    """

    window: tuple[float, float, float, float]
    hflip: bool
    rot90: int


def draw_distortion_window(
    landmarks: np.ndarray, size: int, aspect_range: tuple[float, float], rng: np.random.Generator
) -> tuple[float, float, float, float]:
    """A non-square window of a `size` square that keeps every landmark inside.

    An aspect ratio (width / height) is drawn uniformly from `aspect_range`; the long side spans the
    whole image and the short side is widened where needed so that all landmarks (plus a 1 px margin)
    fit; its offset is drawn uniformly among the positions that keep them inside.

    Returns:
        (left, top, right, bottom) in continuous coordinates, within [0, size].
    """
    aspect = float(rng.uniform(*aspect_range))
    centres = landmarks.astype(np.float64) + 0.5  # continuous coordinates of the pixel centres
    low = np.clip(centres.min(axis=0) - _WINDOW_MARGIN, 0.0, size)
    high = np.clip(centres.max(axis=0) + _WINDOW_MARGIN, 0.0, size)
    # axis 0 (x) is shortened when aspect < 1, axis 1 (y) when aspect > 1
    short_axis = 0 if aspect < 1.0 else 1
    short_length = size * (aspect if aspect < 1.0 else 1.0 / aspect)
    short_length = float(np.clip(short_length, high[short_axis] - low[short_axis], size))
    first = max(0.0, high[short_axis] - short_length)
    last = min(low[short_axis], size - short_length)
    start = float(rng.uniform(first, last)) if last > first else first
    window = [0.0, 0.0, float(size), float(size)]
    window[short_axis] = start
    window[short_axis + 2] = start + short_length
    return (window[0], window[1], window[2], window[3])


def draw_augmentation(
    landmarks: np.ndarray,
    size: int,
    rng: np.random.Generator,
    *,
    hflip: bool,
    rot90: bool,
    distort: tuple[float, float] | None,
) -> AugmentParams:
    """Draw one augmentation for a sample (a fixed number of draws from `rng`, whatever is enabled)."""
    window = (0.0, 0.0, float(size), float(size))
    if distort is not None:
        window = draw_distortion_window(landmarks, size, distort, rng)
    flip_draw, rot_draw = rng.random(2)
    quarter_turns = int(rot_draw // 0.25) if rot90 else 0  # 0, 1, 2, 3 each with p = 0.25
    return AugmentParams(window=window, hflip=bool(hflip and flip_draw < 0.5), rot90=quarter_turns)


def crop_resize(
    image: np.ndarray, landmarks: np.ndarray, window: tuple[float, float, float, float], size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Resample `window` of the image to a `size` square (PIL bicubic) and map the landmarks."""
    left, top, right, bottom = window
    if window == (0.0, 0.0, float(image.shape[1]), float(image.shape[0])) and image.shape[:2] == (size, size):
        return image, landmarks
    resized = Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC, box=window)
    scale = np.array([size / (right - left), size / (bottom - top)], dtype=np.float64)
    origin = np.array([left, top], dtype=np.float64)
    mapped = (landmarks.astype(np.float64) + 0.5 - origin) * scale - 0.5
    return np.array(resized), mapped.astype(np.float32)


def rotate_quarter_turns(
    image: np.ndarray, landmarks: np.ndarray, turns: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rotate a square image counter-clockwise by `turns` x 90 degrees (as `np.rot90`), and its points."""
    size = image.shape[1]
    points = landmarks.astype(np.float32, copy=True)
    for _ in range(turns % 4):
        # np.rot90 moves pixel (row r, col c) to (row size-1-c, col r): (x, y) -> (y, size-1-x)
        points = np.stack([points[:, 1], size - 1 - points[:, 0]], axis=1)
    return np.ascontiguousarray(np.rot90(image, k=turns % 4, axes=(0, 1))), points


def apply_augmentation(
    image: np.ndarray, landmarks: np.ndarray, params: AugmentParams
) -> tuple[np.ndarray, np.ndarray]:
    """Crop-and-stretch, flip, then rotate an image and its landmarks together.

    Args:
        image: size x size x 3 uint8 RGB.
        landmarks: 68 x 2 float (x, y) pixel coordinates in `image`.
        params: from `draw_augmentation`.

    Returns:
        (image, landmarks): size x size x 3 uint8 and 68 x 2 float32 in the new image.
    """
    size = image.shape[0]
    if image.shape[1] != size:
        raise ValueError(f"augmentation expects a square image, got {image.shape}")
    image, points = crop_resize(image, landmarks, params.window, size)
    if params.hflip:
        image = np.ascontiguousarray(image[:, ::-1])
        points = np.asarray(flip_landmarks(points, width=size), dtype=np.float32)
    image, points = rotate_quarter_turns(image, points, params.rot90)
    return image, points.astype(np.float32)

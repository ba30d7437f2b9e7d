"""Augmentation keeps image and landmarks consistent: dots painted at landmarks end up where the
transformed landmarks say, for every transform and their combinations."""

from __future__ import annotations

import numpy as np
import pytest

from facesr.model.landmarks import HFLIP_PERMUTATION
from facesr.train.augment import (
    AugmentParams,
    apply_augmentation,
    draw_augmentation,
    draw_distortion_window,
    rotate_quarter_turns,
)

SIZE = 128
TRACKED = (0, 8, 16, 19, 24, 30, 36, 45, 48, 54)


def synthetic_landmarks(seed: int = 0) -> np.ndarray:
    """68 points spread over the central part of the image (not a face; geometry only)."""
    rng = np.random.default_rng(seed)
    return rng.uniform(22.0, 105.0, size=(68, 2)).astype(np.float32)


def dot_image(point: np.ndarray) -> np.ndarray:
    """A black image with one bright Gaussian dot (sigma 1.2 px) centred on `point` (x, y)."""
    ys, xs = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    blob = np.exp(-((xs - point[0]) ** 2 + (ys - point[1]) ** 2) / (2 * 1.2**2))
    grey = np.round(255 * blob).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def dot_centre(image: np.ndarray, near: np.ndarray, radius: int = 6) -> np.ndarray:
    """Intensity-weighted centroid (x, y) of the dot in a window around `near`."""
    x0, y0 = (round(float(v)) for v in near)
    top, left = max(0, y0 - radius), max(0, x0 - radius)
    patch = image[top : y0 + radius + 1, left : x0 + radius + 1, 0].astype(np.float64)
    patch = np.clip(patch - 8.0, 0.0, None)  # ignore faint ringing of the bicubic kernel
    total = patch.sum()
    assert total > 0, f"no dot found near {near}"
    ys, xs = np.mgrid[0 : patch.shape[0], 0 : patch.shape[1]]
    return np.array([(xs * patch).sum() / total + left, (ys * patch).sum() / total + top])


def new_index_of(original_index: int, params: AugmentParams) -> int:
    """Where an original landmark goes in the output array (a flip permutes the indices)."""
    if not params.hflip:
        return original_index
    return int(np.flatnonzero(np.asarray(HFLIP_PERMUTATION) == original_index)[0])


PARAMS = [
    AugmentParams(window=(0.0, 0.0, 128.0, 128.0), hflip=False, rot90=0),
    AugmentParams(window=(0.0, 0.0, 128.0, 128.0), hflip=True, rot90=0),
    *[AugmentParams(window=(0.0, 0.0, 128.0, 128.0), hflip=False, rot90=k) for k in (1, 2, 3)],
    AugmentParams(window=(12.5, 0.0, 103.0, 128.0), hflip=False, rot90=0),  # narrow window: wider face
    AugmentParams(window=(0.0, 9.25, 128.0, 115.0), hflip=False, rot90=0),  # short window: taller face
    AugmentParams(window=(15.0, 0.0, 110.0, 128.0), hflip=True, rot90=3),
    AugmentParams(window=(0.0, 5.0, 128.0, 108.0), hflip=True, rot90=1),
]


@pytest.mark.parametrize("params", PARAMS, ids=lambda p: f"win{p.window}-flip{p.hflip}-rot{p.rot90}")
def test_dots_follow_landmarks(params: AugmentParams) -> None:
    landmarks = synthetic_landmarks()
    # keep the tracked points inside the window used by the distortion cases
    for index in TRACKED:
        image, moved = apply_augmentation(dot_image(landmarks[index]), landmarks, params)
        expected = moved[new_index_of(index, params)]
        found = dot_centre(image, expected)
        np.testing.assert_allclose(found, expected, atol=0.05, err_msg=f"landmark {index} with {params}")


@pytest.mark.parametrize("seed", range(6))
def test_dots_follow_landmarks_for_drawn_augmentations(seed: int) -> None:
    landmarks = synthetic_landmarks(seed)
    params = draw_augmentation(
        landmarks, SIZE, np.random.default_rng(seed), hflip=True, rot90=True, distort=(0.66, 1.33)
    )
    for index in TRACKED[::3]:
        image, moved = apply_augmentation(dot_image(landmarks[index]), landmarks, params)
        expected = moved[new_index_of(index, params)]
        np.testing.assert_allclose(dot_centre(image, expected), expected, atol=0.05)


def test_rotation_by_four_quarter_turns_is_identity() -> None:
    landmarks = synthetic_landmarks()
    image = dot_image(landmarks[5])
    turned, points = rotate_quarter_turns(image, landmarks, 1)
    for _ in range(3):
        turned, points = rotate_quarter_turns(turned, points, 1)
    np.testing.assert_array_equal(turned, image)
    np.testing.assert_allclose(points, landmarks, atol=1e-4)


def test_one_quarter_turn_is_counter_clockwise() -> None:
    # a point near the top-left corner goes to the bottom-left corner under np.rot90
    _, points = rotate_quarter_turns(np.zeros((SIZE, SIZE, 3), np.uint8), np.array([[10.0, 20.0]] * 68), 1)
    np.testing.assert_allclose(points[0], [20.0, SIZE - 1 - 10.0])


@pytest.mark.parametrize("seed", range(20))
def test_distortion_window_keeps_every_landmark_inside(seed: int) -> None:
    landmarks = synthetic_landmarks(seed)
    left, top, right, bottom = draw_distortion_window(
        landmarks, SIZE, (0.66, 1.33), np.random.default_rng(seed)
    )
    assert 0.0 <= left < right <= SIZE and 0.0 <= top < bottom <= SIZE
    assert (right - left == SIZE) or (bottom - top == SIZE), "one side must span the image"
    centres = landmarks + 0.5
    assert (centres[:, 0] >= left).all() and (centres[:, 0] <= right).all()
    assert (centres[:, 1] >= top).all() and (centres[:, 1] <= bottom).all()
    aspect = (right - left) / (bottom - top)
    assert 0.66 - 1e-9 <= aspect <= 1.33 + 1e-9


def test_distortion_window_widens_to_fit_a_wide_face() -> None:
    # landmarks spanning x in [5, 120]: a 0.66 aspect window cannot hold them and must be widened
    landmarks = np.stack([np.linspace(5, 120, 68), np.full(68, 64.0)], axis=1).astype(np.float32)
    rng = np.random.default_rng(0)
    for _ in range(20):
        left, _, right, _ = draw_distortion_window(landmarks, SIZE, (0.66, 0.67), rng)
        assert left <= 5.5 - 1.0 + 1e-9 and right >= 120.5 + 1.0 - 1e-9


def test_drawing_is_reproducible_and_covers_every_option() -> None:
    landmarks = synthetic_landmarks()

    def draw(seed: int) -> AugmentParams:
        return draw_augmentation(
            landmarks, SIZE, np.random.default_rng(seed), hflip=True, rot90=True, distort=(0.66, 1.33)
        )

    assert draw(7) == draw(7)
    drawn = [draw(seed) for seed in range(400)]
    turns = np.bincount([p.rot90 for p in drawn], minlength=4) / len(drawn)
    np.testing.assert_allclose(turns, 0.25, atol=0.07)
    assert 0.4 < np.mean([p.hflip for p in drawn]) < 0.6
    assert len({p.window for p in drawn}) > 300


def test_disabled_augmentation_is_the_identity() -> None:
    landmarks = synthetic_landmarks()
    params = draw_augmentation(
        landmarks, SIZE, np.random.default_rng(3), hflip=False, rot90=False, distort=None
    )
    image = dot_image(landmarks[0])
    out_image, out_landmarks = apply_augmentation(image, landmarks, params)
    np.testing.assert_array_equal(out_image, image)
    np.testing.assert_array_equal(out_landmarks, landmarks)

"""Landmark grouping, heatmaps, decoding and the horizontal flip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facesr.model.landmarks import (
    COMPONENTS,
    HFLIP_PERMUTATION,
    decode_heatmaps,
    flip_landmarks,
    merge_heatmaps,
    render_heatmaps,
)

LEFT_EYE, RIGHT_EYE = slice(36, 42), slice(42, 48)


def _random_face(rng: np.random.Generator) -> np.ndarray:
    """68 points with the iBUG layout's left/right structure: left eye on the image's left."""
    points = rng.uniform(20, 108, size=(68, 2)).astype(np.float32)
    points[LEFT_EYE, 0] = rng.uniform(30, 55, size=6)
    points[RIGHT_EYE, 0] = rng.uniform(73, 98, size=6)
    return points


def test_flip_permutation_is_an_involution() -> None:
    assert sorted(HFLIP_PERMUTATION.tolist()) == list(range(68))
    np.testing.assert_array_equal(HFLIP_PERMUTATION[HFLIP_PERMUTATION], np.arange(68))


def test_flip_swaps_the_eyes_instead_of_reversing_inside_one() -> None:
    assert set(HFLIP_PERMUTATION[LEFT_EYE].tolist()) == set(range(42, 48))
    assert HFLIP_PERMUTATION[36] == 45 and HFLIP_PERMUTATION[39] == 42  # outer corner <-> outer corner
    assert HFLIP_PERMUTATION[30] == 30 and HFLIP_PERMUTATION[8] == 8  # nose tip and chin stay


def test_flipped_face_keeps_its_left_eye_on_the_left() -> None:
    face = _random_face(np.random.default_rng(1))
    flipped = flip_landmarks(face, width=128)
    assert flipped[LEFT_EYE, 0].mean() < flipped[RIGHT_EYE, 0].mean()
    np.testing.assert_allclose(flip_landmarks(flipped, width=128), face, atol=1e-4)
    torch.testing.assert_close(flip_landmarks(torch.from_numpy(face)), torch.from_numpy(flipped))


def test_flip_matches_a_mirrored_image() -> None:
    """A dot drawn at every landmark lands on the flipped landmark after np.fliplr."""
    face = np.round(_random_face(np.random.default_rng(2))).astype(int)
    image = np.zeros((128, 128, 68), np.uint8)
    image[face[:, 1], face[:, 0], np.arange(68)] = 1
    mirrored = np.fliplr(image)[..., HFLIP_PERMUTATION]
    flipped = flip_landmarks(face.astype(np.float32)).astype(int)
    for k in range(68):
        assert mirrored[flipped[k, 1], flipped[k, 0], k] == 1


@pytest.mark.parametrize("library", ["numpy", "torch"])
def test_heatmap_round_trip_is_subpixel(library: str) -> None:
    rng = np.random.default_rng(3)
    landmarks = rng.uniform(0, 127, size=(4, 68, 2)).astype(np.float32)  # the border cells too
    source = landmarks if library == "numpy" else torch.from_numpy(landmarks)
    heatmaps = render_heatmaps(source)
    assert tuple(heatmaps.shape) == (4, 68, 32, 32)
    decoded = decode_heatmaps(torch.as_tensor(heatmaps)).numpy()
    error = np.abs(decoded - landmarks).max()
    assert error < 0.25, error


def test_points_at_the_image_edges_decode_to_the_edges() -> None:
    edges = np.array([[[0.0, 0.0], [127.0, 127.0], [126.0, 3.0], [1.5, 125.0]]], np.float32)
    decoded = decode_heatmaps(torch.as_tensor(render_heatmaps(edges))).numpy()
    np.testing.assert_allclose(decoded, edges, atol=0.25)


def test_gt_heatmap_is_the_authors_gaussian() -> None:
    heatmap = render_heatmaps(np.array([[[40.0, 20.0]]], np.float32))[0, 0]
    assert heatmap[5, 10] == pytest.approx(1.0)  # (x, y) / 4 = (10, 5), no half-pixel offset
    assert heatmap[5, 11] == pytest.approx(np.exp(-0.5), rel=1e-6)  # sigma = 1 cell


def test_decode_handles_flat_and_negative_maps() -> None:
    heatmaps = torch.full((1, 68, 32, 32), -1.0)
    decoded = decode_heatmaps(heatmaps)
    assert torch.isfinite(decoded).all()
    assert decoded.min() >= 0 and decoded.max() <= 124


def test_merge_groups_the_five_components() -> None:
    heatmaps = torch.zeros(1, 68, 32, 32)
    heatmaps[0, 37, 3, 4] = 2.0  # a left-eye point
    heatmaps[0, 20, 9, 9] = 0.5  # a brow point: silhouette component
    merged = merge_heatmaps(heatmaps)
    assert merged.shape == (1, 5, 32, 32)
    assert [name for name, _ in COMPONENTS] == ["left_eye", "right_eye", "nose", "mouth", "silhouette"]
    assert merged[0, 0, 3, 4] == pytest.approx(1.0)  # normalised by its own max
    assert merged[0, 4, 9, 9] == pytest.approx(1.0)
    assert merged[0, 1:4].abs().max() == 0

"""68-point (iBUG) landmark utilities: component grouping, heatmaps, decoding, horizontal flip.

Coordinates are 0-based pixel positions (x, y) in the 128 x 128 output image unless stated otherwise.
Heatmaps live on a 32 x 32 grid (stride 4) with no half-pixel offset: heatmap cell (i, j) is
output pixel (4 j, 4 i), as the authors' ground-truth generation. The point count, the output size
and the stride are `facesr.model.config`'s NUM_KEYPOINTS, HR_SIZE and HEATMAP_STRIDE.
"""

from __future__ import annotations

from typing import Final, TypeVar

import numpy as np
import torch

from facesr.model.config import HEATMAP_STRIDE, HR_SIZE, NUM_KEYPOINTS

#: Side of the heatmap grid of an HR_SIZE face (128 / 4 = 32).
HEATMAP_SIZE: Final = HR_SIZE // HEATMAP_STRIDE
HEATMAP_SIGMA = 1.0
MAX_FLOOR = 0.05

#: The 5 attention components (name, [start, stop)), in the authors' channel order.
#: The brows (17-26) belong to the silhouette, as in the authors' code.
COMPONENTS: tuple[tuple[str, slice], ...] = (
    ("left_eye", slice(36, 42)),
    ("right_eye", slice(42, 48)),
    ("nose", slice(27, 36)),
    ("mouth", slice(48, 68)),
    ("silhouette", slice(0, 27)),
)
NUM_COMPONENTS = len(COMPONENTS)


def _mirror_pairs() -> np.ndarray:
    pairs = [(i, 16 - i) for i in range(8)]  # jaw
    pairs += [(17 + i, 26 - i) for i in range(5)]  # brows
    pairs += [(31, 35), (32, 34)]  # nostrils (27-30 and 33 lie on the midline)
    pairs += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes: swap the two eyes
    pairs += [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58)]  # outer lips
    pairs += [(60, 64), (61, 63), (65, 67)]  # inner lips
    permutation = np.arange(NUM_KEYPOINTS)
    for a, b in pairs:
        permutation[a], permutation[b] = b, a
    return permutation


#: Point i of a horizontally flipped face is point HFLIP_PERMUTATION[i] of the original. Unlike the
#: authors' code, which reverses the points inside each eye, this swaps the left and right eyes (and
#: brows, jaw sides, nostrils and mouth corners), so "left eye" stays on the image's left.
HFLIP_PERMUTATION: np.ndarray = _mirror_pairs()
HFLIP_PERMUTATION.setflags(write=False)

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def flip_landmarks(landmarks: ArrayT, width: int = HR_SIZE) -> ArrayT:
    """Landmarks of the horizontally mirrored image: x -> width - 1 - x, then the left/right swap.

    Args:
        landmarks: ... x 68 x 2 (x, y) pixels, numpy or torch.
        width: image width in pixels.
    """
    if isinstance(landmarks, np.ndarray):
        flipped = landmarks[..., HFLIP_PERMUTATION, :].copy()
    else:
        index = torch.tensor(HFLIP_PERMUTATION.tolist(), device=landmarks.device)
        flipped = landmarks[..., index, :].clone()
    flipped[..., 0] = (width - 1) - flipped[..., 0]
    return flipped


def merge_heatmaps(heatmaps: torch.Tensor) -> torch.Tensor:
    """68 raw heatmaps -> 5 component maps (B x 68 x h x w -> B x 5 x h x w).

    Each channel is divided by its spatial max (floored at 0.05), then channels are summed within
    each component. The gradient flows through (the attention is not detached).
    """
    peak = heatmaps.amax(dim=(2, 3), keepdim=True).clamp(min=MAX_FLOOR)
    normalised = heatmaps / peak
    return torch.stack([normalised[:, part].sum(dim=1) for _, part in COMPONENTS], dim=1)


def render_heatmaps(
    landmarks: ArrayT, size: int = HEATMAP_SIZE, sigma: float = HEATMAP_SIGMA, stride: int = HEATMAP_STRIDE
) -> ArrayT:
    """Ground-truth Gaussian heatmaps, peak 1 (the authors' `generate_gt`).

    Args:
        landmarks: ... x K x 2 (x, y) in output pixels (numpy or torch).
    Returns:
        ... x K x size x size float32 (same library as the input): exp(-d^2 / (2 sigma^2)) with d the
        distance from the cell to landmark / stride on the integer grid 0..size-1.
    """
    if isinstance(landmarks, torch.Tensor):
        centres = landmarks.to(torch.float32) / stride
        grid = torch.arange(size, dtype=torch.float32, device=landmarks.device)
        dx = (grid - centres[..., 0:1]) ** 2  # ... x K x size
        dy = (grid - centres[..., 1:2]) ** 2
        return torch.exp(-(dy[..., :, None] + dx[..., None, :]) / (2 * sigma**2))
    centres = np.asarray(landmarks, dtype=np.float32) / stride
    grid = np.arange(size, dtype=np.float32)
    dx = (grid - centres[..., 0:1]) ** 2
    dy = (grid - centres[..., 1:2]) ** 2
    return np.exp(-(dy[..., :, None] + dx[..., None, :]) / np.float32(2 * sigma**2)).astype(np.float32)


def _parabola_offset(left: torch.Tensor, centre: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Vertex of the parabola through (-1, left), (0, centre), (1, right), clipped to [-0.5, 0.5]."""
    curvature = left - 2 * centre + right
    safe = torch.where(curvature.abs() > 1e-12, curvature, torch.ones_like(curvature))
    offset = 0.5 * (left - right) / safe
    return torch.where(curvature < -1e-12, offset, torch.zeros_like(offset)).clamp(-0.5, 0.5)


def _edge_offset(centre: torch.Tensor, inner: torch.Tensor, sigma: float) -> torch.Tensor:
    """Offset of a Gaussian peak from an edge cell, positive away from its one inner neighbour.

    With log-values l0 at the edge cell and l1 one cell inwards, a Gaussian of known sigma is centred
    sigma^2 (l0 - l1) - 0.5 cells beyond the edge cell; clipped to [-0.5, 0.75] (the arg-max cell is
    the nearest, and the last output pixel lies 0.75 cell past the last heatmap cell).
    """
    return (sigma**2 * (centre - inner) - 0.5).clamp(-0.5, 0.75)


def decode_heatmaps(heatmaps: torch.Tensor, stride: int = HEATMAP_STRIDE) -> torch.Tensor:
    """Heatmaps -> landmark coordinates with sub-pixel refinement, in output pixels.

    The arg-max cell is refined per axis by a parabola fitted to the log of the three values around it
    (exact for a Gaussian peak); at the grid's border, where one neighbour is missing, a Gaussian of the
    training sigma is fitted to the two cells there is. Where the peak is not positive the cell is used.

    Args:
        heatmaps: B x K x h x w raw heatmaps (any float dtype).
    Returns:
        B x K x 2 float32 (x, y) in output pixels (cell * stride), within [0, size * stride - 1].
    """
    hm = heatmaps.detach().to(torch.float32)
    B, K, H, W = hm.shape
    flat = hm.reshape(B, K, H * W)
    peak, index = flat.max(dim=2)
    row, col = index // W, index % W
    floor = (peak.abs() * 1e-6).clamp(min=1e-12)
    log_hm = torch.log(hm.clamp(min=0) + floor[..., None, None])

    def sample(r: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        r = r.clamp(0, H - 1)
        c = c.clamp(0, W - 1)
        return log_hm.reshape(B, K, H * W).gather(2, (r * W + c).unsqueeze(2)).squeeze(2)

    centre = sample(row, col)
    dx = _parabola_offset(sample(row, col - 1), centre, sample(row, col + 1))
    dy = _parabola_offset(sample(row - 1, col), centre, sample(row + 1, col))
    sigma = HEATMAP_SIGMA
    dx = torch.where(col == 0, -_edge_offset(centre, sample(row, col + 1), sigma), dx)
    dx = torch.where(col == W - 1, _edge_offset(centre, sample(row, col - 1), sigma), dx)
    dy = torch.where(row == 0, -_edge_offset(centre, sample(row + 1, col), sigma), dy)
    dy = torch.where(row == H - 1, _edge_offset(centre, sample(row - 1, col), sigma), dy)
    valid = peak > 0
    dx = torch.where(valid, dx, torch.zeros_like(dx))
    dy = torch.where(valid, dy, torch.zeros_like(dy))
    x = ((col.to(torch.float32) + dx) * stride).clamp(0, W * stride - 1)
    y = ((row.to(torch.float32) + dy) * stride).clamp(0, H * stride - 1)
    return torch.stack((x, y), dim=-1)


def landmark_confidence(heatmaps: torch.Tensor) -> torch.Tensor:
    """Per-point confidence: each heatmap's peak height, clipped to [0, 1].

    The branch is trained towards Gaussians of peak 1 at the landmark, so a peak near 1 is a point it
    is sure of and a flat map (peak near 0) is a guess.

    Args:
        heatmaps: B x K x h x w raw heatmaps (any float dtype).
    Returns:
        B x K float32 in [0, 1].
    """
    return heatmaps.detach().to(torch.float32).amax(dim=(2, 3)).clamp(0.0, 1.0)

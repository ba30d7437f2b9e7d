"""Image and landmark metrics, computed the way the DIC authors report them.

Image quality (PSNR / SSIM) is measured on the luma channel only:

1. both images are uint8 RGB (the model output is post-processed to uint8 first);
2. Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 with R, G, B in [0, 255] (MATLAB BT.601, so
   Y lies in [16, 235]), rounded to the nearest integer (half to even) as a uint8 image;
3. `border` pixels (= the scale factor, 8) are cut from every side: a 128 x 128 face is scored on its
   central 112 x 112;
4. PSNR = 10 log10(255^2 / MSE) in float64; SSIM with an 11 x 11 Gaussian window (sigma 1.5),
   K1 = 0.01, K2 = 0.03, L = 255, "valid" filtering (no padding) and the mean of the SSIM map.

Scores are per image; a data set's score is the mean over its images.

The authors' SSIM code multiplies the uint8 luma by 255 before scoring, which wraps around to 256 - Y,
so their SSIM is taken on inverted luma. `ssim_y` follows the standard definition by default;
`ssim_y(..., authors_wrap=True)` reproduces the wrap (on Helen-50 bicubic faces it reads about 0.0016
higher). PSNR is not affected by the wrap.

Landmark error is the root-mean-square point distance normalised by the face width, the width being
the x-extent of the ground-truth landmarks (max x - min x).
"""

from __future__ import annotations

import numpy as np

from facesr.model.config import SCALE

#: BT.601 luma weights for RGB in [0, 255]; the result is divided by 255 and offset by 16.
Y_WEIGHTS: tuple[float, float, float] = (65.481, 128.553, 24.966)
Y_OFFSET = 16.0
#: Pixels cut from every border before scoring (the authors use the scale factor, 8).
DEFAULT_BORDER = SCALE
PEAK = 255.0
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def rgb_to_y(image: np.ndarray) -> np.ndarray:
    """Luma of a uint8 RGB image, as a rounded uint8 image.

    Args:
        image: H x W x 3 uint8 RGB.

    Returns:
        H x W uint8, values in [16, 235].
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 uint8 RGB image, got {image.shape} {image.dtype}")
    luma = image.astype(np.float64) @ np.asarray(Y_WEIGHTS, dtype=np.float64) / 255.0 + Y_OFFSET
    return np.round(luma).astype(np.uint8)


def _scored_luma(image: np.ndarray, border: int, *, authors_wrap: bool = False) -> np.ndarray:
    """uint8 RGB -> the float64 luma region that is scored (borders cut; optionally 256 - Y)."""
    luma = rgb_to_y(image).astype(np.float64)
    if authors_wrap:
        luma = (256.0 - luma) % 256.0  # uint8(Y * 255) as in the authors' code
    if border < 0:
        raise ValueError(f"border must be >= 0, got {border}")
    if border:
        if min(luma.shape) <= 2 * border:
            raise ValueError(f"image {luma.shape} is too small to cut a {border}-pixel border")
        luma = luma[border:-border, border:-border]
    return luma


def _check_pair(prediction: np.ndarray, target: np.ndarray) -> None:
    if prediction.shape != target.shape:
        raise ValueError(f"images differ in shape: {prediction.shape} vs {target.shape}")


def psnr_y(prediction: np.ndarray, target: np.ndarray, *, border: int = DEFAULT_BORDER) -> float:
    """PSNR in dB between the lumas of two uint8 RGB images (H x W x 3); inf when they are equal."""
    _check_pair(prediction, target)
    pred, ref = _scored_luma(prediction, border), _scored_luma(target, border)
    mse = float(np.mean((pred - ref) ** 2))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(PEAK**2 / mse))


def gaussian_window_1d(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """Normalised 1-D Gaussian taps (the 2-D SSIM window is their outer product)."""
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    taps = np.exp(-(offsets**2) / (2.0 * sigma**2))
    return taps / taps.sum()


def _filter_valid(image: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Separable correlation with `taps` along both axes, keeping only fully covered positions.

    H x W float64 -> (H - k + 1) x (W - k + 1) with k = len(taps).
    """
    k = taps.size
    rows = np.lib.stride_tricks.sliding_window_view(image, k, axis=0) @ taps  # (H-k+1) x W
    return np.lib.stride_tricks.sliding_window_view(rows, k, axis=1) @ taps  # (H-k+1) x (W-k+1)


def ssim_map(reference: np.ndarray, distorted: np.ndarray) -> np.ndarray:
    """SSIM map of two float64 grey images on the [0, 255] scale, valid region only."""
    taps = gaussian_window_1d()
    c1 = (SSIM_K1 * PEAK) ** 2
    c2 = (SSIM_K2 * PEAK) ** 2
    mu_x = _filter_valid(reference, taps)
    mu_y = _filter_valid(distorted, taps)
    var_x = _filter_valid(reference * reference, taps) - mu_x**2
    var_y = _filter_valid(distorted * distorted, taps) - mu_y**2
    cov_xy = _filter_valid(reference * distorted, taps) - mu_x * mu_y
    numerator = (2.0 * mu_x * mu_y + c1) * (2.0 * cov_xy + c2)
    denominator = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return numerator / denominator


def ssim_y(
    prediction: np.ndarray, target: np.ndarray, *, border: int = DEFAULT_BORDER, authors_wrap: bool = False
) -> float:
    """SSIM between the lumas of two uint8 RGB images (H x W x 3), in [-1, 1].

    With `authors_wrap`, the luma is first wrapped to 256 - Y as the authors' evaluation code does.
    """
    _check_pair(prediction, target)
    pred = _scored_luma(prediction, border, authors_wrap=authors_wrap)
    ref = _scored_luma(target, border, authors_wrap=authors_wrap)
    if min(ref.shape) < SSIM_WINDOW:
        raise ValueError(f"scored region {ref.shape} is smaller than the {SSIM_WINDOW}x{SSIM_WINDOW} window")
    return float(ssim_map(ref, pred).mean())


def face_width(landmarks: np.ndarray) -> float:
    """x-extent (max x - min x) of a 68 x 2 (x, y) landmark set, in pixels."""
    return float(landmarks[:, 0].max() - landmarks[:, 0].min())


def landmark_nrmse(predicted: np.ndarray, ground_truth: np.ndarray) -> float:
    """Root-mean-square landmark distance over the face width of the ground truth.

    Args:
        predicted: K x 2 (x, y) pixel coordinates.
        ground_truth: K x 2 (x, y) in the same pixels.

    Returns:
        sqrt(mean_i ||p_i - g_i||^2) / (max_i g_i.x - min_i g_i.x).
    """
    pred = np.asarray(predicted, dtype=np.float64)
    truth = np.asarray(ground_truth, dtype=np.float64)
    if pred.shape != truth.shape or pred.ndim != 2 or pred.shape[1] != 2:
        raise ValueError(f"expected two K x 2 landmark arrays, got {pred.shape} and {truth.shape}")
    width = face_width(truth)
    if width <= 0.0:
        raise ValueError("the ground-truth landmarks have zero width; cannot normalise")
    rms = np.sqrt(np.mean(np.sum((pred - truth) ** 2, axis=1)))
    return float(rms / width)

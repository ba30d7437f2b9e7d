"""PSNR / SSIM on Y and landmark NRMSE, checked against scikit-image and hand-computed values.

On SSIM tolerance: scikit-image filters the whole image (reflect padding) and then drops
(win_size - 1) / 2 = 5 pixels on every side before averaging. With an 11-tap window that leaves exactly
the positions our "valid" filtering computes, from the same pixels, so the two agree to rounding error
(we allow 1e-10) once both are fed the same border-cropped luma.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from facesr.train.metrics import gaussian_window_1d, landmark_nrmse, psnr_y, rgb_to_y, ssim_y


def _skimage_scores(prediction: np.ndarray, target: np.ndarray, border: int = 8) -> tuple[float, float]:
    """scikit-image's PSNR / SSIM on the same border-cropped uint8 luma."""
    pred = rgb_to_y(prediction)[border:-border, border:-border]
    ref = rgb_to_y(target)[border:-border, border:-border]
    psnr = peak_signal_noise_ratio(ref, pred, data_range=255)
    ssim = structural_similarity(
        ref, pred, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )
    return float(psnr), float(ssim)


def _smooth_face_like(rng: np.random.Generator, size: int = 128) -> np.ndarray:
    """A smooth colour image with structure at several scales (more realistic than white noise)."""
    y, x = np.mgrid[0:size, 0:size] / size
    channels = []
    for _ in range(3):
        field = sum(
            rng.uniform(0.2, 1.0)
            * np.sin(2 * np.pi * (rng.uniform(0.5, 6) * x + rng.uniform(0.5, 6) * y) + rng.uniform(0, 6))
            for _ in range(4)
        )
        channels.append(field)
    image = np.stack(channels, axis=-1)
    image = (image - image.min()) / (image.max() - image.min())
    return np.round(image * 255).astype(np.uint8)


def _degrade(rng: np.random.Generator, image: np.ndarray, noise: float) -> np.ndarray:
    noisy = image.astype(np.float64) + rng.normal(0.0, noise, image.shape)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


@pytest.mark.parametrize(("seed", "noise"), [(0, 2.0), (1, 8.0), (2, 25.0), (3, 60.0)])
def test_psnr_and_ssim_match_scikit_image(seed: int, noise: float) -> None:
    rng = np.random.default_rng(seed)
    target = _smooth_face_like(rng)
    prediction = _degrade(rng, target, noise)

    expected_psnr, expected_ssim = _skimage_scores(prediction, target)

    assert psnr_y(prediction, target) == pytest.approx(expected_psnr, abs=1e-10)
    assert ssim_y(prediction, target) == pytest.approx(expected_ssim, abs=1e-10)


def test_psnr_and_ssim_match_scikit_image_on_unrelated_images() -> None:
    rng = np.random.default_rng(7)
    target = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
    prediction = _smooth_face_like(rng)

    expected_psnr, expected_ssim = _skimage_scores(prediction, target)

    assert psnr_y(prediction, target) == pytest.approx(expected_psnr, abs=1e-10)
    assert ssim_y(prediction, target) == pytest.approx(expected_ssim, abs=1e-10)
    assert ssim_y(prediction, target) < 0.2


def test_luma_uses_bt601_studio_range_and_rounds() -> None:
    pixels = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255]]], dtype=np.uint8)
    # 16 + 65.481 = 81.481; 16 + 128.553 = 144.553; 16 + 24.966 = 40.966; 16 + 219 = 235.
    assert rgb_to_y(pixels).tolist() == [[16, 235, 81, 145, 41]]
    assert rgb_to_y(pixels).dtype == np.uint8


def test_psnr_of_a_one_level_luma_difference() -> None:
    black = np.zeros((32, 32, 3), dtype=np.uint8)
    nearly_black = np.ones((32, 32, 3), dtype=np.uint8)  # Y = 16.86 -> 17, one level above 16
    assert psnr_y(nearly_black, black) == pytest.approx(20 * math.log10(255.0), abs=1e-12)


def test_luma_rounding_hides_sub_level_differences() -> None:
    image = np.full((32, 32, 3), 100, dtype=np.uint8)
    shifted = image.copy()
    shifted[..., 2] += 1  # +24.966/255 ~ 0.1 of a luma level: same rounded Y
    assert psnr_y(shifted, image) == math.inf
    assert ssim_y(shifted, image) == pytest.approx(1.0)


def test_border_is_excluded_from_the_scores() -> None:
    rng = np.random.default_rng(3)
    target = _smooth_face_like(rng, size=64)
    prediction = target.copy()
    prediction[:8] = 255 - prediction[:8]  # damage only the top 8 rows
    prediction[:, -8:] = 0  # and the right 8 columns
    assert psnr_y(prediction, target, border=8) == math.inf
    assert ssim_y(prediction, target, border=8) == pytest.approx(1.0)
    assert psnr_y(prediction, target, border=4) < 20
    assert ssim_y(prediction, target, border=0) < 0.95


def test_ssim_window_is_a_normalised_gaussian() -> None:
    taps = gaussian_window_1d()
    assert taps.shape == (11,)
    assert taps.sum() == pytest.approx(1.0)
    assert taps[5] / taps[6] == pytest.approx(math.exp(1 / (2 * 1.5**2)))
    np.testing.assert_allclose(taps, taps[::-1])


@pytest.mark.parametrize(
    ("prediction", "target", "message"),
    [
        (np.zeros((16, 16, 3), np.uint8), np.zeros((16, 17, 3), np.uint8), "differ in shape"),
        (np.zeros((16, 16, 3), np.float32), np.zeros((16, 16, 3), np.float32), "uint8"),
        (np.zeros((16, 16), np.uint8), np.zeros((16, 16), np.uint8), "uint8 RGB"),
        (np.zeros((16, 16, 3), np.uint8), np.zeros((16, 16, 3), np.uint8), "too small"),
    ],
)
def test_bad_inputs_are_refused(prediction: np.ndarray, target: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        psnr_y(prediction, target)


def test_ssim_refuses_regions_smaller_than_the_window() -> None:
    image = np.zeros((24, 24, 3), np.uint8)  # 8 x 8 after the border cut
    with pytest.raises(ValueError, match="smaller than the 11x11 window"):
        ssim_y(image, image)


def test_nrmse_of_a_constant_offset() -> None:
    truth = np.stack([np.linspace(10.0, 110.0, 68), np.linspace(20.0, 60.0, 68)], axis=1)  # width 100
    prediction = truth + np.array([3.0, 4.0])  # every point 5 px away
    assert landmark_nrmse(prediction, truth) == pytest.approx(0.05)
    assert landmark_nrmse(truth, truth) == 0.0


def test_nrmse_is_root_mean_square_not_mean_distance() -> None:
    truth = np.zeros((4, 2))
    truth[:, 0] = [0.0, 10.0, 20.0, 40.0]  # width 40
    prediction = truth.copy()
    prediction[0, 1] += 8.0  # one point 8 px off, three exact: RMS = sqrt(64 / 4) = 4
    assert landmark_nrmse(prediction, truth) == pytest.approx(4.0 / 40.0)


def test_nrmse_normalises_by_ground_truth_width_only() -> None:
    truth = np.array([[0.0, 0.0], [50.0, 0.0]])
    squeezed = np.array([[0.0, 0.0], [10.0, 0.0]])  # the prediction's own width must not matter
    assert landmark_nrmse(squeezed, truth) == pytest.approx(math.sqrt(40.0**2 / 2) / 50.0)


def test_nrmse_refuses_bad_shapes_and_zero_width() -> None:
    with pytest.raises(ValueError, match="K x 2"):
        landmark_nrmse(np.zeros((68, 2)), np.zeros((67, 2)))
    with pytest.raises(ValueError, match="zero width"):
        landmark_nrmse(np.ones((68, 2)), np.ones((68, 2)))


def test_authors_wrap_scores_ssim_on_inverted_luma() -> None:
    rng = np.random.default_rng(11)
    target = _smooth_face_like(rng)
    prediction = _degrade(rng, target, 20.0)
    wrapped_ref = 256.0 - rgb_to_y(target)[8:-8, 8:-8].astype(np.float64)
    wrapped_pred = 256.0 - rgb_to_y(prediction)[8:-8, 8:-8].astype(np.float64)
    expected = structural_similarity(
        wrapped_ref,
        wrapped_pred,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=255,
    )

    wrapped = ssim_y(prediction, target, authors_wrap=True)

    assert wrapped == pytest.approx(expected, abs=1e-10)
    assert wrapped != pytest.approx(ssim_y(prediction, target), abs=1e-6)

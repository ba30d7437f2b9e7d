"""The one LR-making function and the one bicubic baseline."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from facesr.model.config import HR_SIZE, LR_SIZE
from facesr.model.errors import InputImageError
from facesr.model.preprocess import bicubic_baseline, make_lr


def _faces(count: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(count, size, size, 3), dtype=np.uint8)


def _pil_resize(image: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC))


def test_make_lr_is_pil_bicubic_to_the_configured_size() -> None:
    hr = _faces(3, HR_SIZE)
    lr = make_lr(hr)
    assert lr.shape == (3, LR_SIZE, LR_SIZE, 3) and lr.dtype == np.uint8
    for face, small in zip(hr, lr, strict=True):
        np.testing.assert_array_equal(small, _pil_resize(face, LR_SIZE))
        np.testing.assert_array_equal(make_lr(face), small)  # one face
        np.testing.assert_array_equal(make_lr(Image.fromarray(face)), small)  # a PIL image
    assert make_lr(hr[:0]).shape == (0, LR_SIZE, LR_SIZE, 3)
    assert make_lr(hr[0], 8).shape == (8, 8, 3)


def test_make_lr_antialiases() -> None:
    """A one-pixel checkerboard has no frequency a 16 x 16 image can hold: it must become flat gray."""
    checker = ((np.indices((HR_SIZE, HR_SIZE)).sum(axis=0) % 2) * 255).astype(np.uint8)
    lr = make_lr(np.repeat(checker[..., None], 3, axis=2))
    assert np.abs(lr.astype(int) - 128).max() <= 2


def test_bicubic_baseline_is_pil_bicubic_back_to_the_hr_size() -> None:
    lr = _faces(2, LR_SIZE, seed=1)
    up = bicubic_baseline(lr)
    assert up.shape == (2, HR_SIZE, HR_SIZE, 3) and up.dtype == np.uint8
    for face, big in zip(lr, up, strict=True):
        np.testing.assert_array_equal(big, _pil_resize(face, HR_SIZE))
        np.testing.assert_array_equal(bicubic_baseline(face), big)


@pytest.mark.parametrize(
    "bad",
    [np.zeros((16, 16, 3), np.float32), np.zeros((16, 16), np.uint8), np.zeros((2, 16, 16, 4), np.uint8)],
)
def test_bad_faces_are_refused(bad: np.ndarray) -> None:
    with pytest.raises(InputImageError):
        make_lr(bad)
    with pytest.raises(InputImageError):
        bicubic_baseline(bad)


def test_preprocessing_needs_no_torch() -> None:
    """The API process runs the input policy without torch installed."""
    code = "import sys, facesr.model.input_policy; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0

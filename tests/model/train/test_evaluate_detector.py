"""The external ONNX landmark detector (PFLD-68), on real Helen-50 faces; skipped without ../shared."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from facesr.model.checkpoint import ModelCard, save_checkpoint
from facesr.model.config import DICConfig
from facesr.model.generator import DICGenerator
from facesr.service.cli import app
from facesr.train.landmark_detector import LandmarkDetectorError, OnnxLandmarkDetector
from facesr.train.metrics import landmark_nrmse

pytestmark = pytest.mark.shared


@pytest.fixture(scope="module")
def helen(shared_dir: Path) -> Path:
    path = shared_dir / "data" / "helen-50"
    if not path.is_dir():
        pytest.skip(f"helen-50 not found in {shared_dir}")
    return path


@pytest.fixture(scope="module")
def pfld_path(shared_dir: Path) -> Path:
    path = shared_dir / "models" / "pfld68.onnx"
    if not path.is_file():
        pytest.skip(f"pfld68.onnx not found in {shared_dir / 'models'}")
    return path


def load_helen(root: Path, count: int) -> tuple[np.ndarray, np.ndarray]:
    names = (root / "list.txt").read_text().split()[:count]
    images = []
    for name in names:
        with Image.open(root / "HR" / name) as image:
            images.append(np.asarray(image.convert("RGB")))
    return np.stack(images), np.load(root / "landmarks68.npy")[:count]


def test_detector_finds_helen_landmarks_on_hr(helen: Path, pfld_path: Path) -> None:
    images, truth = load_helen(helen, 10)
    detector = OnnxLandmarkDetector(pfld_path, num_threads=1)

    predicted = detector.detect(images, batch_size=4)

    assert predicted.shape == (10, 68, 2)
    assert predicted.dtype == np.float32
    errors = [landmark_nrmse(p, t) for p, t in zip(predicted, truth, strict=True)]
    # Measured on all 50 Helen-50 HR faces: mean 0.026, max 0.047 (a few pixels on a ~100 px face).
    assert np.mean(errors) < 0.04
    assert max(errors) < 0.07


def test_detector_output_follows_the_image(helen: Path, pfld_path: Path) -> None:
    """Mirroring the face mirrors the detected x coordinates (a sign-of-life check of the mapping)."""
    images, _ = load_helen(helen, 3)
    detector = OnnxLandmarkDetector(pfld_path, num_threads=1)
    direct = detector.detect(images)
    mirrored = detector.detect(images[:, :, ::-1].copy())
    # The jaw's first point (image left) becomes the jaw's last point (image right) after a flip.
    np.testing.assert_allclose(127 - mirrored[:, 16, 0], direct[:, 0, 0], atol=4.0)


def test_detector_refuses_a_file_that_is_not_the_model(tmp_path: Path, pfld_path: Path) -> None:
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"not an onnx model")
    with pytest.raises(LandmarkDetectorError, match="cannot load landmark model"):
        OnnxLandmarkDetector(bogus)
    with pytest.raises(LandmarkDetectorError, match="not found"):
        OnnxLandmarkDetector(tmp_path / "absent.onnx")


def test_cli_evaluate_with_the_detector_on_helen(tmp_path: Path, helen: Path, pfld_path: Path) -> None:
    config = DICConfig.tiny()
    checkpoint = tmp_path / "tiny.safetensors"
    save_checkpoint(checkpoint, DICGenerator(config), config, ModelCard(name="tiny", config=config.to_dict()))
    out = tmp_path / "report"
    result = CliRunner().invoke(
        app,
        [
            *("evaluate", "--checkpoint", str(checkpoint), "--data", str(helen), "--limit", "3"),
            *("--landmark-model", str(pfld_path), "--out", str(out), "--device", "cpu"),
        ],
    )
    assert result.exit_code == 0, result.output

    report = json.loads((out / "report.json").read_text())
    rows = {row["method"]: row for row in report["methods"]}
    assert report["data"]["num_images"] == 3
    assert all(rows[method]["nrmse_detector"] is not None for method in rows)
    # HR is the detector's floor; an untrained model's SR cannot beat it by much.
    assert rows["hr"]["nrmse_detector"] < 0.05
    assert rows["step_4"]["nrmse_detector"] > rows["hr"]["nrmse_detector"] * 0.8
    # Bicubic x8 on Helen-50 is about 24 dB.
    assert 20.0 < rows["bicubic"]["psnr_y"] < 28.0
    assert (out / "grid.png").is_file()

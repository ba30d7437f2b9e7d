"""`facesr evaluate` end to end on a tiny synthetic test set with a tiny random checkpoint.

The numbers in the report are recomputed here by independent routes: scikit-image for the bicubic
baseline, and the model package's own inference engine (`FaceSR.enhance_tensor`) for the SR steps and
the final alignment-branch landmarks.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio
from typer.testing import CliRunner

from facesr.model.checkpoint import ModelCard, save_checkpoint
from facesr.model.config import DICConfig
from facesr.model.generator import DICGenerator
from facesr.model.inference import FaceSR
from facesr.model.preprocess import bicubic_baseline, make_lr
from facesr.service.cli import app
from facesr.train.evaluate import Degradation, evaluate
from facesr.train.face_folder import FaceFolder
from facesr.train.metrics import landmark_nrmse, rgb_to_y
from facesr.train.report import picture_grid, report_dict

NUM_IMAGES = 3


def synthetic_face(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A 128 x 128 smooth 'face' (ellipse on a gradient) and 68 landmarks on it."""
    y, x = np.mgrid[0:128, 0:128].astype(np.float64)
    cx, cy = rng.uniform(58, 70, 2)
    inside = ((x - cx) / 42) ** 2 + ((y - cy) / 52) ** 2 < 1
    image = np.stack([40 + x, 80 + 0.5 * y, 120 - 0.3 * x], axis=-1)
    image[inside] = rng.uniform(120, 220, 3)
    eyes = np.exp(-((x - cx + 16) ** 2 + (y - cy + 10) ** 2) / 20) + np.exp(
        -((x - cx - 16) ** 2 + (y - cy + 10) ** 2) / 20
    )
    image -= 90 * eyes[..., None]
    angles = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    landmarks = np.column_stack([cx + 40 * np.cos(angles), cy + 50 * np.sin(angles)])
    return np.clip(np.round(image), 0, 255).astype(np.uint8), landmarks.astype(np.float32)


def write_dataset(root: Path, count: int, *, seed: int = 0, extension: str = ".png") -> Path:
    rng = np.random.default_rng(seed)
    (root / "HR").mkdir(parents=True)
    names, all_landmarks = [], []
    for index in range(count):
        image, landmarks = synthetic_face(rng)
        name = f"face{index:02d}{extension}"
        Image.fromarray(image).save(root / "HR" / name)
        names.append(name)
        all_landmarks.append(landmarks)
    (root / "list.txt").write_text("\n".join(names) + "\n")
    np.save(root / "landmarks68.npy", np.stack(all_landmarks))
    return root


def write_checkpoint(path: Path, config: DICConfig) -> Path:
    card = ModelCard(name="tiny-eval-test", config=config.to_dict(), description="random weights for tests")
    save_checkpoint(path, DICGenerator(config), config, card)
    return path


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("eval") / "data", NUM_IMAGES)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", DICConfig.tiny())


def read_image(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def y_psnr(prediction: np.ndarray, target: np.ndarray) -> float:
    """scikit-image PSNR on the border-cropped luma (an independent PSNR)."""
    pred, ref = rgb_to_y(prediction)[8:-8, 8:-8], rgb_to_y(target)[8:-8, 8:-8]
    return float(peak_signal_noise_ratio(ref, pred, data_range=255))


def test_cli_evaluate_writes_a_consistent_report(tmp_path: Path, dataset_dir: Path, checkpoint: Path) -> None:
    out = tmp_path / "report"
    result = CliRunner().invoke(
        app,
        [
            *("evaluate", "--checkpoint", str(checkpoint), "--data", str(dataset_dir), "--out", str(out)),
            *("--device", "cpu", "--batch-size", "2", "--grid", "2"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "| SR step 4 (final) |" in result.output

    report = json.loads((out / "report.json").read_text())
    rows = {row["method"]: row for row in report["methods"]}
    assert list(rows) == ["bicubic", "step_1", "step_2", "step_3", "step_4", "hr"]
    assert report["data"]["num_images"] == NUM_IMAGES
    assert report["landmark_detector"] is None
    assert all(row["nrmse_detector"] is None for row in rows.values())
    assert rows["bicubic"]["nrmse_alignment"] is None
    assert rows["hr"]["psnr_y"] is None
    assert 0 < abs(rows["bicubic"]["ssim_y_authors"] - rows["bicubic"]["ssim_y"]) < 0.05

    # Independent recomputation: PIL bicubic + scikit-image for the baseline, and the model
    # package's own inference engine for the SR steps and the final landmarks.
    names = (dataset_dir / "list.txt").read_text().split()
    hr = np.stack([read_image(dataset_dir / "HR" / name) for name in names])
    truth = np.load(dataset_dir / "landmarks68.npy")
    lr = np.stack(
        [np.asarray(Image.fromarray(image).resize((16, 16), Image.Resampling.BICUBIC)) for image in hr]
    )
    bicubic = [
        np.asarray(Image.fromarray(image).resize((128, 128), Image.Resampling.BICUBIC)) for image in lr
    ]
    engine = FaceSR.from_checkpoint(checkpoint, device="cpu")
    results = engine.enhance_tensor(lr, return_steps=True)

    expected_bicubic = np.mean([y_psnr(b, h) for b, h in zip(bicubic, hr, strict=True)])
    assert rows["bicubic"]["psnr_y"] == pytest.approx(expected_bicubic, abs=1e-9)
    for step in range(4):
        expected = np.mean([y_psnr(r.steps[step], h) for r, h in zip(results, hr, strict=True)])
        assert rows[f"step_{step + 1}"]["psnr_y"] == pytest.approx(expected, abs=1e-6)
    expected_nrmse = np.mean([landmark_nrmse(r.landmarks, t) for r, t in zip(results, truth, strict=True)])
    assert rows["step_4"]["nrmse_alignment"] == pytest.approx(expected_nrmse, rel=1e-5)
    for step in range(1, 4):
        assert rows[f"step_{step}"]["nrmse_alignment"] > 0

    per_image = report["per_image"]
    assert [entry["name"] for entry in per_image] == names
    assert np.mean([entry["ssim_y"]["step_4"] for entry in per_image]) == pytest.approx(
        rows["step_4"]["ssim_y"]
    )

    markdown = (out / "report.md").read_text()
    assert markdown.count("\n| ") == 7  # header + 6 methods
    assert f"{rows['bicubic']['psnr_y']:.2f}" in markdown

    grid = read_image(out / "grid.png")
    assert grid.shape == (14 + 2 * 130 - 2, 7 * 130 - 2, 3)  # 2 faces x (LR, bicubic, 4 steps, HR)
    hr_tile = grid[14 : 14 + 128, 6 * 130 : 6 * 130 + 128]
    assert np.mean(hr_tile != hr[0]) < 0.05  # the HR tile is the first face (plus ground-truth dots)


def test_model_without_alignment_branch_reports_no_alignment_nrmse(tmp_path: Path, dataset_dir: Path) -> None:
    config = DICConfig.tiny(landmark_mode="none", num_steps=2)
    engine = FaceSR.from_checkpoint(write_checkpoint(tmp_path / "nl.safetensors", config), device="cpu")

    evaluation = evaluate(engine, FaceFolder.open(dataset_dir, limit=2), progress=False)

    rows = {row.method: row for row in evaluation.summary()}
    assert list(rows) == ["bicubic", "step_1", "step_2", "hr"]
    assert all(row.nrmse_alignment is None for row in rows.values())
    assert rows["step_2"].psnr is not None
    assert rows["step_2"].label == "SR step 2 (final)"
    assert len(evaluation.per_image) == 2
    assert picture_grid(evaluation) is not None
    json.dumps(report_dict(evaluation), allow_nan=False)


def test_jpeg_names_without_extension_and_limit(tmp_path: Path, checkpoint: Path) -> None:
    root = write_dataset(tmp_path / "jpeg", 4, extension=".jpg")
    (root / "list.txt").write_text("".join(f"face{i:02d}\n" for i in range(4)))
    engine = FaceSR.from_checkpoint(checkpoint, device="cpu")
    evaluation = evaluate(engine, FaceFolder.open(root, limit=3), progress=False, grid_images=0)
    assert [scores.name for scores in evaluation.per_image] == ["face00", "face01", "face02"]


def test_protocol_images_are_the_shared_lr_and_baseline(dataset_dir: Path, checkpoint: Path) -> None:
    """The kept LR faces are `make_lr` of HR and the bicubic images are `bicubic_baseline` of them."""
    engine = FaceSR.from_checkpoint(checkpoint, device="cpu")
    folder = FaceFolder.open(dataset_dir)
    evaluation = evaluate(engine, folder, progress=False, grid_images=NUM_IMAGES, batch_size=2)
    hr = folder.read_images(0, NUM_IMAGES)
    np.testing.assert_array_equal(np.stack(evaluation.samples.lr), make_lr(hr))
    np.testing.assert_array_equal(
        np.stack(evaluation.samples.images["bicubic"]), bicubic_baseline(make_lr(hr))
    )


def test_cli_reports_bad_inputs_without_a_traceback(
    tmp_path: Path, dataset_dir: Path, checkpoint: Path
) -> None:
    runner = CliRunner()
    missing_model = runner.invoke(
        app,
        [
            *("evaluate", "--checkpoint", str(checkpoint), "--data", str(dataset_dir)),
            *("--landmark-model", str(tmp_path / "absent.onnx"), "--out", str(tmp_path / "o")),
        ],
    )
    assert missing_model.exit_code == 1
    assert "landmark model not found" in missing_model.output
    missing_checkpoint = runner.invoke(
        app, ["evaluate", "--checkpoint", str(tmp_path / "absent.safetensors"), "--data", str(dataset_dir)]
    )
    assert missing_checkpoint.exit_code == 1
    assert "checkpoint not found" in missing_checkpoint.output
    missing_data = runner.invoke(app, ["evaluate", "--checkpoint", str(checkpoint), "--data", str(tmp_path)])
    assert missing_data.exit_code == 1
    assert "missing list.txt" in missing_data.output
    assert not (tmp_path / "o").exists()


@pytest.mark.shared
def test_low_resolution_inputs_match_the_reference_lr_images(shared_dir: Path) -> None:
    """Our 128 -> 16 bicubic gives the same LR as the parity fixtures made from Helen-50."""
    helen = shared_dir / "data" / "helen-50" / "HR"
    references = sorted((shared_dir / "dic-reference" / "tiny").glob("lr_*.png"))
    if not references or not helen.is_dir():
        pytest.skip("helen-50 or the reference LR images are missing from the shared folder")
    for reference in references:
        name = reference.stem.removeprefix("lr_")
        hr = read_image(helen / f"{name}.jpg")
        np.testing.assert_array_equal(make_lr(hr), read_image(reference))


def test_shifted_input_distribution_is_applied_to_model_and_baseline_alike(
    tmp_path: Path, dataset_dir: Path, checkpoint: Path
) -> None:
    """--lr-kernel box --lr-jpeg-quality 50: both the baseline and the model see the compressed inputs."""
    out = tmp_path / "shifted"
    args = ["evaluate", "--checkpoint", str(checkpoint), "--data", str(dataset_dir), "--device", "cpu"]
    result = CliRunner().invoke(
        app, [*args, "--out", str(out), "--lr-kernel", "box", "--lr-jpeg-quality", "50"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert (
        report["protocol"]["lr"]
        == "HR 128x128 resized to 16x16 with PIL box (antialiased), then JPEG-compressed at quality 50"
    )

    names = (dataset_dir / "list.txt").read_text().split()
    hr = np.stack([read_image(dataset_dir / "HR" / name) for name in names])
    lr = Degradation(kernel="box", jpeg_quality=50).apply(hr)
    paper = Degradation().apply(hr)
    assert lr.shape == paper.shape == (NUM_IMAGES, 16, 16, 3) and not np.array_equal(lr, paper)
    bicubic = [
        np.asarray(Image.fromarray(image).resize((128, 128), Image.Resampling.BICUBIC)) for image in lr
    ]
    expected = np.mean([y_psnr(b, h) for b, h in zip(bicubic, hr, strict=True)])
    rows = {row["method"]: row for row in report["methods"]}
    assert rows["bicubic"]["psnr_y"] == pytest.approx(expected, abs=1e-9)

    bad = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "bad"), "--lr-kernel", "nearest-ish"])
    assert bad.exit_code == 1 and "unknown LR kernel" in bad.output and "Traceback" not in bad.output

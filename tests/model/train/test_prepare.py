"""`facesr prepare`: annotated photos -> 128 x 128 crops with landmarks in crop pixels.

Landmark mapping is checked against the pixels themselves: the synthetic photos carry small bright
blobs at some landmarks, and the blob centres found in the crop must sit on the mapped landmarks to
a tenth of a pixel (a half-pixel convention error would be ~0.3 px; a 1-based .pts read as 0-based
would be ~0.4 px).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from facesr.service.cli import app
from facesr.train.prepare import (
    CropRule,
    PrepareError,
    crop_face,
    load_annotations,
    prepare_dataset,
    read_pts,
)

BACKGROUND = 60.0
BLOB_SIGMA = 4.0


def make_landmarks(
    rng: np.random.Generator, x_range: tuple[float, float], y_range: tuple[float, float]
) -> np.ndarray:
    """68 points inside the box; points 0-3 pin its extremes (and carry blobs in the photos)."""
    (x0, x1), (y0, y1) = x_range, y_range
    points = np.column_stack([rng.uniform(x0 + 20, x1 - 20, 68), rng.uniform(y0 + 20, y1 - 20, 68)])
    points[0] = (x0, (y0 + y1) / 2 - 17.3)
    points[1] = (x1, (y0 + y1) / 2 + 11.6)
    points[2] = ((x0 + x1) / 2 + 7.4, y0)
    points[3] = ((x0 + x1) / 2 - 9.1, y1)
    return points


def make_photo(width: int, height: int, blobs: np.ndarray) -> np.ndarray:
    """Uniform grey photo with a Gaussian blob centred at each (x, y) (0-based pixel centres)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    light = np.zeros((height, width))
    for bx, by in blobs:
        light += np.exp(-((x - bx) ** 2 + (y - by) ** 2) / (2 * BLOB_SIGMA**2))
    grey = np.clip(np.round(BACKGROUND + 190.0 * light), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def blob_centre(crop: np.ndarray, near: np.ndarray, radius: int = 8) -> np.ndarray:
    """Intensity centroid (above the background) of the blob around `near`, in crop pixels."""
    cx, cy = np.round(near).astype(int)
    window = crop[cy - radius : cy + radius + 1, cx - radius : cx + radius + 1, 0].astype(np.float64)
    weight = np.clip(window - BACKGROUND, 0, None)
    y, x = np.mgrid[cy - radius : cy + radius + 1, cx - radius : cx + radius + 1]
    return np.array([(weight * x).sum() / weight.sum(), (weight * y).sum() / weight.sum()])


def read_image(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def write_pts(path: Path, points: np.ndarray, *, one_based: bool = True) -> None:
    shown = points + (1.0 if one_based else 0.0)
    body = "\n".join(f"{x:.3f} {y:.3f}" for x, y in shown)
    path.write_text(f"version: 1\nn_points:  {len(points)}\n{{\n{body}\n}}\n")


def load_output(out_dir: Path) -> tuple[list[str], np.ndarray]:
    names = (out_dir / "list.txt").read_text().split()
    landmarks = np.load(out_dir / "landmarks68.npy")
    assert landmarks.dtype == np.float32
    assert landmarks.shape == (len(names), 68, 2)
    return names, landmarks


def test_crop_maps_landmarks_onto_the_pixels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    points = make_landmarks(rng, (200.0, 440.0), (150.0, 330.0))
    photo = make_photo(640, 480, points[:4])
    Image.fromarray(photo).save(tmp_path / "face.png")
    write_pts(tmp_path / "face.pts", points)

    faces, problems = load_annotations(tmp_path)
    summary = prepare_dataset(faces, tmp_path / "out", CropRule(), problems=problems, progress=False)

    assert summary.written == ["face.png"]
    assert not summary.skipped
    assert not summary.padded
    names, landmarks = load_output(tmp_path / "out")
    crop = read_image(tmp_path / "out" / "HR" / "face.png")
    assert names == ["face.png"]
    assert crop.shape == (128, 128, 3)
    for index in range(4):
        np.testing.assert_allclose(blob_centre(crop, landmarks[0, index]), landmarks[0, index], atol=0.1)
    # The training set's geometry: the larger landmark side is 128 / 1.25 and the box centre is the
    # crop centre (63.5 in pixel-centre coordinates).
    extent = landmarks[0].max(axis=0) - landmarks[0].min(axis=0)
    assert extent.max() == pytest.approx(128 / 1.25, abs=1e-3)
    centre = (landmarks[0].max(axis=0) + landmarks[0].min(axis=0)) / 2
    np.testing.assert_allclose(centre, [63.5, 63.5], atol=1e-3)


def test_face_at_the_photo_edge_is_padded_black_not_dropped(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    points = make_landmarks(rng, (5.0, 165.0), (60.0, 220.0))  # box: side 200, left edge 14.5 px off-photo
    points[10], points[11] = (60.0, 100.0), (120.0, 190.0)
    photo = make_photo(300, 300, points[[10, 11, 1]])
    Image.fromarray(photo).save(tmp_path / "edge.jpg", quality=98)
    write_pts(tmp_path / "edge.pts", points)

    faces, problems = load_annotations(tmp_path)
    summary = prepare_dataset(faces, tmp_path / "out", CropRule(), problems=problems, progress=False)

    assert summary.written == ["edge.png"]
    assert summary.padded == ["edge.png"]
    _, landmarks = load_output(tmp_path / "out")
    crop = read_image(tmp_path / "out" / "HR" / "edge.png").astype(int)
    # 14.5 photo px x (128 / 200) = 9.3 crop columns lie left of the photo; bicubic reaches 2 further.
    assert np.all(crop[:, :7] == 0)
    assert np.all(crop[:, 12:] >= BACKGROUND - 5)  # photo content (background or blob), never black
    for index in (10, 11):
        np.testing.assert_allclose(blob_centre(crop, landmarks[0, index]), landmarks[0, index], atol=0.12)


def test_bad_files_are_reported_and_skipped(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    points = make_landmarks(rng, (60.0, 200.0), (50.0, 190.0))
    photo = make_photo(256, 256, points[:4])
    for name in ("good", "corrupt", "truncated", "malformed", "short", "orphan"):
        write_pts(tmp_path / f"{name}.pts", points)
    Image.fromarray(photo).save(tmp_path / "good.png")
    (tmp_path / "corrupt.jpg").write_bytes(b"this is not a JPEG at all")
    Image.fromarray(photo).save(tmp_path / "truncated.jpg")
    data = (tmp_path / "truncated.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 3])
    Image.fromarray(photo).save(tmp_path / "malformed.png")
    (tmp_path / "malformed.pts").write_text("version: 1\nn_points: 68\n{\n1.0 2.0\nnot numbers\n}\n")
    Image.fromarray(photo).save(tmp_path / "short.png")
    write_pts(tmp_path / "short.pts", points[:60])

    faces, problems = load_annotations(tmp_path)
    summary = prepare_dataset(faces, tmp_path / "out", CropRule(), problems=problems, progress=False)

    assert summary.written == ["good.png"]
    reasons = {problem.source: problem.reason for problem in summary.skipped}
    assert set(reasons) == {"corrupt.pts", "truncated.pts", "malformed.pts", "short.pts", "orphan.pts"}
    assert "unreadable image" in reasons["corrupt.pts"]
    assert "unreadable image" in reasons["truncated.pts"]
    assert "malformed" in reasons["malformed.pts"]
    assert "60" in reasons["short.pts"]
    assert "no image" in reasons["orphan.pts"]
    names, _ = load_output(tmp_path / "out")
    assert names == ["good.png"]
    assert sorted(p.name for p in (tmp_path / "out" / "HR").iterdir()) == ["good.png"]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("n_points: 2\n{\n1 2\n3 4\n", "no '}'"),
        ("n_points: 2\n1 2\n3 4\n}\n", "unexpected header"),
        ("version: 1\n{\n1 2\n3 4\n}\n", "n_points"),
        ("n_points: 3\n{\n1 2\n3 4\n}\n", "says 3 but the file lists 2"),
        ("n_points: 2\n{\n1 2\n3\n}\n", "not two numbers"),
    ],
)
def test_read_pts_explains_malformed_files(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "x.pts"
    path.write_text(text)
    with pytest.raises(ValueError, match=reason):
        read_pts(path)


def test_several_faces_of_one_photo_and_nested_folders(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    first = make_landmarks(rng, (20.0, 120.0), (40.0, 140.0))
    second = make_landmarks(rng, (180.0, 300.0), (60.0, 180.0))
    folder = tmp_path / "afw"
    folder.mkdir()
    Image.fromarray(make_photo(320, 240, np.concatenate([first[:4], second[:4]]))).save(folder / "1234.png")
    write_pts(folder / "1234_1.pts", first)
    write_pts(folder / "1234_2.pts", second)

    faces, problems = load_annotations(tmp_path)
    prepare_dataset(faces, tmp_path / "out", CropRule(), problems=problems, progress=False)

    names, landmarks = load_output(tmp_path / "out")
    assert names == ["afw_1234_1.png", "afw_1234_2.png"]
    crops = [read_image(tmp_path / "out" / "HR" / name) for name in names]
    for crop, points in zip(crops, landmarks, strict=True):
        np.testing.assert_allclose(blob_centre(crop, points[0]), points[0], atol=0.15)


def test_csv_and_npy_annotation_forms_give_the_same_crops(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    photos = tmp_path / "photos"
    photos.mkdir()
    all_points = []
    for index in range(2):
        points = make_landmarks(rng, (40.0 + 10 * index, 200.0), (30.0, 190.0 - 5 * index))
        Image.fromarray(make_photo(256, 256, points[:4])).save(photos / f"p{index}.png")
        all_points.append(points)
    rows = ["name," + ",".join(f"x{i},y{i}" for i in range(68))]
    rows += [f"p{i}.png," + ",".join(f"{v:.4f}" for v in pts.ravel()) for i, pts in enumerate(all_points)]
    rows.append("p0.png,1,2,3")  # wrong field count: reported, skipped
    (tmp_path / "faces.csv").write_text("\n".join(rows) + "\n")
    np.save(tmp_path / "faces.npy", np.stack(all_points).astype(np.float32))
    (tmp_path / "names.txt").write_text("p0\np1\n")  # extension optional

    csv_faces, csv_problems = load_annotations(photos, tmp_path / "faces.csv")
    npy_faces, npy_problems = load_annotations(
        photos, tmp_path / "faces.npy", names_file=tmp_path / "names.txt"
    )
    prepare_dataset(csv_faces, tmp_path / "from_csv", CropRule(), problems=csv_problems, progress=False)
    prepare_dataset(npy_faces, tmp_path / "from_npy", CropRule(), problems=npy_problems, progress=False)

    assert [p.source for p in csv_problems] == ["faces.csv row 4"]
    assert not npy_problems
    csv_names, csv_landmarks = load_output(tmp_path / "from_csv")
    npy_names, npy_landmarks = load_output(tmp_path / "from_npy")
    assert csv_names == npy_names == ["p0.png", "p1.png"]
    np.testing.assert_allclose(csv_landmarks, npy_landmarks, atol=1e-3)
    crop = read_image(tmp_path / "from_csv" / "HR" / "p1.png")
    np.testing.assert_allclose(blob_centre(crop, csv_landmarks[1, 2]), csv_landmarks[1, 2], atol=0.1)


def test_npy_with_a_mismatched_name_list_is_a_clear_error(tmp_path: Path) -> None:
    np.save(tmp_path / "faces.npy", np.zeros((3, 68, 2), np.float32))
    (tmp_path / "list.txt").write_text("a.png\nb.png\n")
    with pytest.raises(PrepareError, match=r"2 names but .* 3 faces"):
        load_annotations(tmp_path, tmp_path / "faces.npy")


def test_crop_rule_options_change_the_box() -> None:
    points = np.column_stack([np.linspace(100, 200, 68), np.linspace(50, 130, 68)])
    photo = Image.new("RGB", (400, 300), (90, 90, 90))
    _, plain, _ = crop_face(photo, points, CropRule())
    _, wide, _ = crop_face(photo, points, CropRule(scale=2.0, size=64))
    _, shifted, _ = crop_face(photo, points, CropRule(shift_y=0.1))
    assert np.ptp(wide[:, 0]) == pytest.approx(64 / 2.0, abs=1e-3)
    # Moving the box down by 0.1 x extent moves the face up by 0.1 x 102.4 crop pixels.
    np.testing.assert_allclose(shifted - plain, np.tile([0.0, -10.24], (68, 1)), atol=1e-3)
    with pytest.raises(ValueError, match="scale"):
        CropRule(scale=0.0)


def test_cli_prepares_prints_a_summary_and_refuses_to_overwrite(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    points = make_landmarks(rng, (60.0, 200.0), (50.0, 190.0))
    Image.fromarray(make_photo(256, 256, points[:4])).save(tmp_path / "a.png")
    write_pts(tmp_path / "a.pts", points)
    (tmp_path / "b.png").write_bytes(b"\x89PNG broken")
    write_pts(tmp_path / "b.pts", points)
    runner = CliRunner()

    result = runner.invoke(app, ["prepare", str(tmp_path), str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "prepared 1 faces" in result.output
    assert "skipped b.pts" in result.output

    again = runner.invoke(app, ["prepare", str(tmp_path), str(tmp_path / "out")])
    assert again.exit_code == 1
    assert "--overwrite" in again.output

    forced = runner.invoke(
        app, ["prepare", str(tmp_path), str(tmp_path / "out"), "--overwrite", "--size", "64"]
    )
    assert forced.exit_code == 0, forced.output
    assert read_image(tmp_path / "out" / "HR" / "a.png").shape == (64, 64, 3)

    missing = runner.invoke(app, ["prepare", str(tmp_path / "nowhere"), str(tmp_path / "out2")])
    assert missing.exit_code == 1
    assert "source folder not found" in missing.output


def test_colliding_output_names_are_reported_not_overwritten(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    points = make_landmarks(rng, (60.0, 200.0), (50.0, 190.0))
    photo = make_photo(256, 256, points[:4])
    (tmp_path / "x").mkdir()
    for stem in ("x_y", "x/y"):
        Image.fromarray(photo).save(tmp_path / f"{stem}.png")
        write_pts(tmp_path / f"{stem}.pts", points)

    faces, problems = load_annotations(tmp_path)
    summary = prepare_dataset(faces, tmp_path / "out", CropRule(), problems=problems, progress=False)

    assert summary.written == ["x_y.png"]
    assert len(summary.skipped) == 1
    assert "already taken" in summary.skipped[0].reason
    names, landmarks = load_output(tmp_path / "out")
    assert names == ["x_y.png"]
    assert landmarks.shape == (1, 68, 2)


def test_the_command_imports_each_concept_from_its_own_module() -> None:
    """Readers, crop geometry and writer live in their own modules; `prepare` re-exports them."""
    from facesr.train import annotations, crop, face_folder, prepare

    assert prepare.load_annotations is annotations.load_annotations
    assert prepare.read_pts is annotations.read_pts
    assert prepare.CropRule is crop.CropRule and prepare.crop_face is crop.crop_face
    assert prepare.PrepareError is annotations.PrepareError
    assert prepare.LIST_FILE == face_folder.LIST_FILE

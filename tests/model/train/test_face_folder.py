"""The one face-folder reader: its checks, and that training, evaluation and `prepare` share it."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from facesr.model.config import HR_SIZE, NUM_KEYPOINTS
from facesr.train import cli as train_cli
from facesr.train.config import TrainConfig
from facesr.train.face_folder import HR_DIR, LANDMARKS_FILE, LIST_FILE, DatasetError, FaceFolder
from facesr.train.trainer import run_training
from tests.model.train.helpers import write_face_folder

COUNT = 6


def _train_app() -> typer.Typer:
    """The training package's own commands (prepare, evaluate, train, release) on a bare app."""
    app = typer.Typer()
    train_cli.register(app)
    return app


@pytest.fixture
def root(tmp_path: Path) -> Path:
    write_face_folder(tmp_path / "faces", count=COUNT)
    return tmp_path / "faces"


def test_open_reads_names_paths_and_landmarks(root: Path) -> None:
    written = np.load(root / LANDMARKS_FILE)
    folder = FaceFolder.open(root)
    assert len(folder) == COUNT and folder.image_size == HR_SIZE
    assert folder.names == tuple(f"face_{i:02d}.png" for i in range(COUNT))
    assert folder.paths == tuple(root / HR_DIR / name for name in folder.names)
    assert folder.landmarks.dtype == np.float32 and folder.landmarks.shape == (COUNT, NUM_KEYPOINTS, 2)
    np.testing.assert_array_equal(folder.landmarks, written)
    image = folder.read_image(2)
    assert image.shape == (HR_SIZE, HR_SIZE, 3) and image.dtype == np.uint8
    with Image.open(folder.paths[2]) as reference:
        np.testing.assert_array_equal(image, np.asarray(reference.convert("RGB")))
    np.testing.assert_array_equal(folder.read_images(1, 3), np.stack([folder.read_image(1), image]))


def _write_names(root: Path, names: list[str]) -> None:
    (root / LIST_FILE).write_text("".join(f"{name}\n" for name in names), encoding="utf-8")


def _pickled_landmarks(root: Path) -> None:
    np.save(root / LANDMARKS_FILE, np.array([{"x": 1}] * COUNT, dtype=object), allow_pickle=True)


def _nan_landmarks(root: Path) -> None:
    landmarks = np.load(root / LANDMARKS_FILE)
    landmarks[1, 5, 0] = np.nan
    np.save(root / LANDMARKS_FILE, landmarks)


BROKEN: list[tuple[str, Callable[[Path], None], str]] = [
    ("no list", lambda root: (root / LIST_FILE).unlink(), "missing list.txt"),
    ("no landmarks", lambda root: (root / LANDMARKS_FILE).unlink(), "missing landmarks68.npy"),
    ("no HR", lambda root: shutil.rmtree(root / HR_DIR), "missing HR"),
    (
        "count",
        lambda root: np.save(root / LANDMARKS_FILE, np.zeros((2, 68, 2))),
        "list.txt has 6 names, landmarks68.npy 2 faces",
    ),
    ("shape", lambda root: np.save(root / LANDMARKS_FILE, np.zeros((6, 5, 2))), "N x 68 x 2 array"),
    ("nan", _nan_landmarks, "NaN"),
    ("pickle", _pickled_landmarks, "cannot read as a plain numpy array"),
    ("empty list", lambda root: _write_names(root, []), "lists no images"),
    (
        "duplicate",
        lambda root: _write_names(root, [f"face_{i:02d}.png" for i in (0, 1, 2, 3, 4, 1)]),
        "more than once, e.g. 'face_01.png'",
    ),
    (
        "missing image",
        lambda root: (root / HR_DIR / "face_03.png").unlink(),
        "1 image(s) listed in list.txt are not in HR/, e.g. 'face_03.png'",
    ),
]


@pytest.mark.parametrize(
    ("damage", "message"), [case[1:] for case in BROKEN], ids=[case[0] for case in BROKEN]
)
def test_broken_folders_are_refused_with_the_file_and_the_problem(
    root: Path, damage: Callable[[Path], None], message: str
) -> None:
    damage(root)
    with pytest.raises(DatasetError, match=re.escape(message)):
        FaceFolder.open(root)


def test_bad_images_are_refused_when_read(root: Path) -> None:
    Image.new("RGB", (64, 64)).save(root / HR_DIR / "face_00.png")
    (root / HR_DIR / "face_01.png").write_bytes(b"not a png")
    folder = FaceFolder.open(root)
    with pytest.raises(DatasetError, match=r"face_00\.png is 64x64, expected 128x128"):
        folder.read_image(0)
    with pytest.raises(DatasetError, match=r"face_01\.png: cannot read image"):
        folder.read_images(1, 3)


def test_missing_folder_and_bad_limit_are_refused(root: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="face folder not found"):
        FaceFolder.open(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="limit must be at least 1"):
        FaceFolder.open(root, limit=0)


def test_names_without_extension_and_limit(root: Path) -> None:
    for index in range(COUNT):
        source = root / HR_DIR / f"face_{index:02d}.png"
        with Image.open(source) as image:
            image.save(source.with_suffix(".jpg"), quality=95)
        source.unlink()
    _write_names(root, [f"face_{i:02d}" for i in range(COUNT)])
    (root / HR_DIR / "face_05.jpg").unlink()  # beyond the limit: not needed
    folder = FaceFolder.open(root, limit=3)
    assert folder.names == ("face_00", "face_01", "face_02")
    assert [path.name for path in folder.paths] == ["face_00.jpg", "face_01.jpg", "face_02.jpg"]
    assert folder.landmarks.shape == (3, NUM_KEYPOINTS, 2)
    assert folder.read_images(0, 3).shape == (3, HR_SIZE, HR_SIZE, 3)
    with pytest.raises(DatasetError, match="'face_05'"):
        FaceFolder.open(root)


def test_split_is_fixed_and_disjoint(root: Path) -> None:
    folder = FaceFolder.open(root)
    train, val = folder.split(2, seed=5)
    assert (train, val) == folder.split(2, seed=5)
    assert len(val) == 2 and not set(train) & set(val) and len(train) + len(val) == len(folder)
    with pytest.raises(DatasetError, match="leaves no training images"):
        folder.split(len(folder), seed=0)


@pytest.mark.parametrize(
    "damage",
    [case[1] for case in BROKEN if case[0] in ("count", "duplicate", "missing image")],
    ids=["count", "duplicate", "missing image"],
)
def test_training_and_evaluation_refuse_a_folder_with_the_same_words(
    root: Path,
    tmp_path: Path,
    make_config: Callable[..., TrainConfig],
    damage: Callable[[Path], None],
) -> None:
    """`facesr train` and `facesr evaluate` read a face folder with the one reader, so they agree."""
    damage(root)
    with pytest.raises(DatasetError) as reader:
        FaceFolder.open(root)
    message = str(reader.value)
    with pytest.raises(DatasetError) as training:
        run_training(make_config({"data": {"root": str(root)}}), tmp_path / "run", progress=False)
    assert str(training.value) == message
    result = CliRunner().invoke(
        _train_app(), ["evaluate", "--data", str(root), "--device", "cpu", "--out", str(tmp_path / "out")]
    )
    assert result.exit_code == 1 and message in result.output.replace("\n", "")
    assert not (tmp_path / "out").exists()


def test_a_prepared_folder_is_read_back_by_the_reader(tmp_path: Path) -> None:
    """The writer of `facesr prepare` and the reader agree on the layout."""
    from facesr.train.prepare import CropRule, FaceAnnotation, prepare_dataset

    photo = tmp_path / "photos" / "one.png"
    photo.parent.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, size=(200, 180, 3), dtype=np.uint8)).save(photo)
    landmarks = rng.uniform(50, 130, size=(NUM_KEYPOINTS, 2))
    faces = [
        FaceAnnotation("one", photo, landmarks, "test"),
        FaceAnnotation("two", photo, landmarks + 5, "test"),
    ]
    summary = prepare_dataset(faces, tmp_path / "out", CropRule(), progress=False)
    folder = FaceFolder.open(tmp_path / "out")
    assert list(folder.names) == summary.written == ["one.png", "two.png"]
    assert folder.read_images(0, 2).shape == (2, HR_SIZE, HR_SIZE, 3)

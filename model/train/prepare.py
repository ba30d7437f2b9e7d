"""`facesr prepare`: turn annotated face photos into a face folder of training crops with landmarks.

The run reads annotations (`facesr.train.annotations`), cuts every face with its crop rule
(`facesr.train.crop`) and writes the face folder layout of `facesr.train.face_folder`:

* `HR/<name>.png`, size x size RGB crops (128 x 128 by default);
* `landmarks68.npy`, `N x 68 x 2` float32 (x, y) in crop pixels;
* `list.txt`, the N file names in the same order.

A bad input (unreadable image, malformed annotation, wrong point count) is reported and skipped; it
never stops the run. The public names of the readers and of the crop rule are re-exported here, the
command's one import.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from facesr.model.config import NUM_KEYPOINTS
from facesr.train.annotations import (
    IMAGE_EXTENSIONS,
    AnnotationError,
    FaceAnnotation,
    PrepareError,
    Problem,
    discover_pts,
    load_annotations,
    read_csv_annotations,
    read_npy_annotations,
    read_pts,
)
from facesr.train.crop import CropRule, crop_face
from facesr.train.face_folder import HR_DIR, LANDMARKS_FILE, LIST_FILE

__all__ = [
    "IMAGE_EXTENSIONS",
    "AnnotationError",
    "CropRule",
    "FaceAnnotation",
    "PrepareError",
    "PrepareSummary",
    "Problem",
    "check_output_dir",
    "crop_face",
    "discover_pts",
    "load_annotations",
    "prepare_dataset",
    "read_csv_annotations",
    "read_npy_annotations",
    "read_pts",
]


@dataclass
class PrepareSummary:
    """What a run wrote and what it skipped."""

    written: list[str] = field(default_factory=list)
    padded: list[str] = field(default_factory=list)
    skipped: list[Problem] = field(default_factory=list)

    def describe(self) -> str:
        """A multi-line human summary (the CLI prints it)."""
        lines = [
            f"prepared {len(self.written)} faces ({len(self.padded)} padded where the box left the photo); "
            f"skipped {len(self.skipped)}"
        ]
        lines.extend(f"  skipped {problem.source}: {problem.reason}" for problem in self.skipped)
        return "\n".join(lines)


def _load_photo(path: Path) -> Image.Image:
    """Open and decode a photo as RGB, turning every decoder failure into an AnnotationError."""
    try:
        with Image.open(path) as handle:
            return handle.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise AnnotationError(f"unreadable image {path.name}: {error}") from error


def _iter_with_photo(faces: list[FaceAnnotation]) -> Iterator[tuple[FaceAnnotation, Image.Image | Problem]]:
    """Yield each face with its decoded photo, or the reason it cannot be decoded.

    Consecutive faces of one photo share a single decode.
    """
    cached_path: Path | None = None
    cached: Image.Image | str = ""
    for face in faces:
        if face.image_path != cached_path:
            cached_path = face.image_path
            try:
                cached = _load_photo(face.image_path)
            except AnnotationError as error:
                cached = str(error)
        yield face, Problem(face.source, cached) if isinstance(cached, str) else cached


def check_output_dir(out_dir: Path, *, overwrite: bool) -> None:
    """Refuse to mix a new run into an existing data set unless asked to overwrite it."""
    existing = [name for name in (LANDMARKS_FILE, LIST_FILE) if (out_dir / name).exists()]
    hr_dir = out_dir / HR_DIR
    if hr_dir.is_dir() and any(hr_dir.iterdir()):
        existing.append(f"{HR_DIR}/")
    if existing and not overwrite:
        raise PrepareError(f"{out_dir} already holds a data set ({', '.join(existing)}); pass --overwrite")


def prepare_dataset(
    faces: list[FaceAnnotation],
    out_dir: Path,
    rule: CropRule,
    *,
    problems: list[Problem] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> PrepareSummary:
    """Crop every face, write the data set, and say what was skipped.

    Args:
        faces: faces to crop (from `load_annotations` or a reader of `facesr.train.annotations`).
        out_dir: output folder; gets `HR/`, `landmarks68.npy` and `list.txt`.
        rule: the crop rule.
        problems: problems the reader already found (reported in the summary).
        overwrite: replace an existing data set in `out_dir` (stale crops in `HR/` are removed).
        progress: show a tqdm bar on stderr.
    """
    check_output_dir(out_dir, overwrite=overwrite)
    hr_dir = out_dir / HR_DIR
    hr_dir.mkdir(parents=True, exist_ok=True)
    for stale in hr_dir.glob("*.png"):
        stale.unlink()
    summary = PrepareSummary(skipped=list(problems or []))
    crops: dict[str, np.ndarray] = {}  # file name -> 68 x 2 crop landmarks
    ordered = sorted(faces, key=lambda face: (str(face.image_path), face.name))
    for face, photo in tqdm(
        _iter_with_photo(ordered), total=len(ordered), desc="prepare", unit="face", disable=not progress
    ):
        file_name = f"{face.name}.png"
        if isinstance(photo, Problem):
            summary.skipped.append(photo)
            continue
        if file_name in crops:
            summary.skipped.append(Problem(face.source, f"output name {file_name} is already taken"))
            continue
        try:
            crop, landmarks, padded = crop_face(photo, face.landmarks, rule)
        except AnnotationError as error:
            summary.skipped.append(Problem(face.source, str(error)))
            continue
        Image.fromarray(crop).save(hr_dir / file_name)
        crops[file_name] = landmarks
        if padded:
            summary.padded.append(file_name)
    summary.written = sorted(crops)
    stacked = np.zeros((len(crops), NUM_KEYPOINTS, 2), dtype=np.float32)
    for row, file_name in enumerate(summary.written):
        stacked[row] = crops[file_name]
    np.save(out_dir / LANDMARKS_FILE, stacked)
    (out_dir / LIST_FILE).write_text("".join(f"{name}\n" for name in summary.written), encoding="utf-8")
    return summary

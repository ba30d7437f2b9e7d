"""Reading 68-point face annotations: which photo, which 68 landmarks, which output name.

Three forms are read:

* 300-W `.pts` files beside the images (`<stem>.pts` for `<stem>.jpg|png|...`; `<stem>_<k>.pts`
  also matches `<stem>.jpg`, the 300-W way of annotating several faces of one photo);
* a CSV file, one face per row: `name,x0,y0,x1,y1,...,x67,y67` (an optional header row is skipped);
* an NPY array `N x 68 x 2` (x, y) plus a text file with the N image names, one per line.

Coordinates are pixel centres at integers (0-based). 300-W `.pts` files count from 1 (MATLAB), so by
default 1 is subtracted from them; CSV and NPY inputs are taken as 0-based. A bad record (malformed
annotation, wrong point count, missing photo) becomes a `Problem` and is skipped; only an input that
stops the whole run (missing folder, unreadable table) raises `PrepareError`.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facesr.model.config import NUM_KEYPOINTS
from facesr.train.face_folder import LIST_FILE

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_MULTI_FACE_SUFFIX = re.compile(r"^(?P<photo>.+)_\d+$")


class AnnotationError(ValueError):
    """One annotation record or file cannot be used."""


class PrepareError(RuntimeError):
    """The whole run cannot proceed (missing input, unreadable annotation table, occupied output)."""


@dataclass(frozen=True)
class FaceAnnotation:
    """One face to crop: its photo, its 68 landmarks there, and the output name (no extension)."""

    name: str
    image_path: Path
    landmarks: np.ndarray  # 68 x 2 float64 (x, y), 0-based photo pixels
    source: str  # where the annotation came from, for messages


@dataclass(frozen=True)
class Problem:
    """A skipped input: what it was and why."""

    source: str
    reason: str


def _checked_landmarks(points: np.ndarray, origin: int) -> np.ndarray:
    """Validate a K x 2 array and shift it to 0-based coordinates."""
    if points.shape != (NUM_KEYPOINTS, 2):
        raise AnnotationError(f"expected {NUM_KEYPOINTS} points, got {points.shape[0]}")
    if not np.all(np.isfinite(points)):
        raise AnnotationError("landmarks contain NaN or infinity")
    return points.astype(np.float64) - float(origin)


def read_pts(path: Path) -> np.ndarray:
    """Parse a 300-W `.pts` file as written (no origin shift).

    Returns:
        K x 2 float64 (x, y) with K the file's `n_points`.

    Raises:
        AnnotationError: the file is not a well-formed `.pts` file.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise AnnotationError(f"cannot read: {error}") from error
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    header = {}
    body_start = None
    for index, line in enumerate(lines):
        if line == "{":
            body_start = index + 1
            break
        key, sep, value = line.partition(":")
        if not sep:
            raise AnnotationError(f"unexpected header line {line!r}")
        header[key.strip().lower()] = value.strip()
    if body_start is None:
        raise AnnotationError("no '{' opening the point list")
    try:
        count = int(header["n_points"])
    except (KeyError, ValueError) as error:
        raise AnnotationError("missing or non-integer n_points header") from error
    try:
        body_end = lines.index("}", body_start)
    except ValueError as error:
        raise AnnotationError("no '}' closing the point list") from error
    rows = [line.split() for line in lines[body_start:body_end]]
    if len(rows) != count:
        raise AnnotationError(f"n_points says {count} but the file lists {len(rows)} points")
    try:
        points = np.asarray([[float(row[0]), float(row[1])] for row in rows], dtype=np.float64)
    except (ValueError, IndexError) as error:
        raise AnnotationError(f"a point line is not two numbers: {error}") from error
    return points.reshape(count, 2)


def _find_image(base: Path) -> Path | None:
    """`base` if it is a file, else the first `base.<image extension>` that exists (any case)."""
    if base.suffix.lower() in IMAGE_EXTENSIONS and base.is_file():
        return base
    stem = base.with_suffix("") if base.suffix.lower() in IMAGE_EXTENSIONS else base
    for extension in IMAGE_EXTENSIONS:
        for spelling in (extension, extension.upper()):
            candidate = stem.with_name(stem.name + spelling)
            if candidate.is_file():
                return candidate
    return None


def _image_for_pts(pts_path: Path) -> Path | None:
    """The photo a `.pts` file annotates: same stem, or the stem without a `_<k>` face index."""
    stem = pts_path.with_suffix("")
    image = _find_image(stem)
    if image is None:
        match = _MULTI_FACE_SUFFIX.match(stem.name)
        if match:
            image = _find_image(stem.with_name(match["photo"]))
    return image


def _output_name(src_dir: Path, path: Path) -> str:
    """`a/b/c.jpg` under src_dir -> `a_b_c` (the training set's naming)."""
    relative = path.relative_to(src_dir) if path.is_relative_to(src_dir) else Path(path.name)
    return "_".join(relative.with_suffix("").parts)


def discover_pts(src_dir: Path, *, origin: int = 1) -> tuple[list[FaceAnnotation], list[Problem]]:
    """Every `.pts` file under `src_dir` (recursively) with its photo."""
    faces, problems = [], []
    for pts_path in sorted(src_dir.rglob("*.pts")):
        source = str(pts_path.relative_to(src_dir))
        try:
            landmarks = _checked_landmarks(read_pts(pts_path), origin)
        except AnnotationError as error:
            problems.append(Problem(source, f"malformed .pts: {error}"))
            continue
        image_path = _image_for_pts(pts_path)
        if image_path is None:
            problems.append(Problem(source, "no image with the same name beside it"))
            continue
        faces.append(FaceAnnotation(_output_name(src_dir, pts_path), image_path, landmarks, source))
    return faces, problems


def _named_faces(
    src_dir: Path, records: Iterable[tuple[str, str, np.ndarray]], origin: int
) -> tuple[list[FaceAnnotation], list[Problem]]:
    """(source, image name, K x 2 points) records -> faces, with unique output names."""
    faces, problems, used = [], [], set()
    for source, image_name, points in records:
        try:
            landmarks = _checked_landmarks(points, origin)
        except AnnotationError as error:
            problems.append(Problem(source, str(error)))
            continue
        image_path = _find_image(src_dir / image_name)
        if image_path is None:
            problems.append(Problem(source, f"image {image_name!r} not found under the source folder"))
            continue
        base = _output_name(src_dir, image_path)
        name, copy = base, 1
        while name in used:  # several faces of one photo
            copy += 1
            name = f"{base}_{copy}"
        used.add(name)
        faces.append(FaceAnnotation(name, image_path, landmarks, source))
    return faces, problems


def read_csv_annotations(
    csv_path: Path, src_dir: Path, *, origin: int = 0
) -> tuple[list[FaceAnnotation], list[Problem]]:
    """Faces from a `name,x0,y0,...,x67,y67` CSV (names relative to `src_dir`; extension optional)."""
    records: list[tuple[str, str, np.ndarray]] = []
    problems: list[Problem] = []
    expected_fields = 1 + 2 * NUM_KEYPOINTS
    try:
        with csv_path.open(newline="", encoding="utf-8") as handle:
            for row_number, row in enumerate(csv.reader(handle), start=1):
                source = f"{csv_path.name} row {row_number}"
                if not row or all(not cell.strip() for cell in row):
                    continue
                if len(row) != expected_fields:
                    problems.append(Problem(source, f"expected {expected_fields} fields, got {len(row)}"))
                    continue
                try:
                    values = np.asarray([float(cell) for cell in row[1:]], dtype=np.float64)
                except ValueError:
                    if row_number != 1:  # the first row may be a header
                        problems.append(Problem(source, "coordinates are not all numbers"))
                    continue
                records.append((source, row[0].strip(), values.reshape(NUM_KEYPOINTS, 2)))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise PrepareError(f"cannot read annotation table {csv_path}: {error}") from error
    faces, more_problems = _named_faces(src_dir, records, origin)
    return faces, problems + more_problems


def read_npy_annotations(
    npy_path: Path, list_path: Path, src_dir: Path, *, origin: int = 0
) -> tuple[list[FaceAnnotation], list[Problem]]:
    """Faces from an `N x 68 x 2` NPY array plus a list of N image names (same order)."""
    try:
        points = np.load(npy_path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise PrepareError(f"cannot read landmark array {npy_path}: {error}") from error
    try:
        names = [line.strip() for line in list_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise PrepareError(f"cannot read name list {list_path}: {error}") from error
    if points.ndim != 3 or points.shape[1:] != (NUM_KEYPOINTS, 2):
        raise PrepareError(f"{npy_path}: expected an N x {NUM_KEYPOINTS} x 2 array, got {points.shape}")
    if len(names) != len(points):
        raise PrepareError(f"{list_path} lists {len(names)} names but {npy_path} holds {len(points)} faces")
    records = [(f"{list_path.name} line {i + 1}", name, points[i]) for i, name in enumerate(names)]
    return _named_faces(src_dir, records, origin)


def load_annotations(
    src_dir: Path,
    annotations: Path | None = None,
    *,
    names_file: Path | None = None,
    origin: int | None = None,
) -> tuple[list[FaceAnnotation], list[Problem]]:
    """Pick the reader for the annotation form: `.pts` beside images (None), a `.csv`, or a `.npy`.

    Args:
        src_dir: the photo folder.
        annotations: None, or a `.csv` / `.npy` file.
        names_file: for `.npy`, the name list (default: `list.txt` beside the array).
        origin: coordinate of the first pixel centre in the annotations (0 or 1); default 1 for `.pts`
            files (300-W convention) and 0 for CSV / NPY.
    """
    if not src_dir.is_dir():
        raise PrepareError(f"source folder not found: {src_dir}")
    if origin not in (None, 0, 1):
        raise PrepareError(f"origin must be 0 or 1, got {origin}")
    if annotations is None:
        return discover_pts(src_dir, origin=1 if origin is None else origin)
    if not annotations.is_file():
        raise PrepareError(f"annotation file not found: {annotations}")
    suffix = annotations.suffix.lower()
    if suffix == ".csv":
        return read_csv_annotations(annotations, src_dir, origin=origin or 0)
    if suffix == ".npy":
        names = names_file if names_file is not None else annotations.with_name(LIST_FILE)
        if not names.is_file():
            raise PrepareError(f"name list for {annotations.name} not found: {names} (pass --names)")
        return read_npy_annotations(annotations, names, src_dir, origin=origin or 0)
    raise PrepareError(f"unknown annotation format {annotations.name!r}: expected .csv or .npy")

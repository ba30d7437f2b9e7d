"""The prepared face folder: its layout and the one reader that training and evaluation share.

Layout (written by `facesr prepare`, the `faces-300w-128` and `helen-50` format):

    HR/<name>            size x size RGB faces (128 x 128; PNG, or JPEG for test sets)
    landmarks68.npy      N x 68 x 2 float, (x, y) 0-based pixel coordinates in the HR image
    list.txt             the N image names, one per line, in the order of the landmark array

A name in list.txt is the file name under HR/; a name without extension also finds
`<name>.png`, `.jpg` or `.jpeg`. Every problem is a `DatasetError` that names the file and what is
wrong with it: a missing file, a landmark array of the wrong shape or with NaN, a count that differs
from list.txt, duplicate names, listed images that are not in HR/, unreadable images and images of the
wrong size.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
from PIL import Image

from facesr.model.config import HR_SIZE, NUM_KEYPOINTS

HR_DIR: Final = "HR"
LANDMARKS_FILE: Final = "landmarks68.npy"
LIST_FILE: Final = "list.txt"
#: Extensions tried, in this order, for a listed name that is not itself a file in HR/.
NAME_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg")


class DatasetError(ValueError):
    """A face folder is missing or does not follow the layout of this module's docstring."""


def _resolve_image(hr_dir: Path, name: str) -> Path | None:
    """`HR/<name>` if it is a file, else the first `HR/<name><extension>` that is."""
    path = hr_dir / name
    if path.is_file():
        return path
    for extension in NAME_EXTENSIONS:
        candidate = hr_dir / f"{name}{extension}"
        if candidate.is_file():
            return candidate
    return None


def _read_names(list_file: Path) -> list[str]:
    try:
        text = list_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"{list_file}: cannot read: {error}") from error
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise DatasetError(f"{list_file}: lists no images")
    duplicates = sorted(name for name, times in Counter(names).items() if times > 1)
    if duplicates:
        raise DatasetError(f"{list_file}: names listed more than once, e.g. {duplicates[0]!r}")
    return names


def _read_landmarks(landmark_file: Path, count: int, list_file: Path) -> np.ndarray:
    try:
        landmarks = np.load(landmark_file, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise DatasetError(f"{landmark_file}: cannot read as a plain numpy array: {error}") from error
    if landmarks.ndim != 3 or landmarks.shape[1:] != (NUM_KEYPOINTS, 2):
        raise DatasetError(
            f"{landmark_file}: expected an N x {NUM_KEYPOINTS} x 2 array, got shape {landmarks.shape}"
        )
    if len(landmarks) != count:
        raise DatasetError(
            f"{landmark_file.parent}: {list_file.name} has {count} names, {landmark_file.name} "
            f"{len(landmarks)} faces (they must match one to one)"
        )
    if not np.issubdtype(landmarks.dtype, np.number) or not np.isfinite(landmarks).all():
        raise DatasetError(f"{landmark_file}: landmarks contain NaN, infinity or non-numbers")
    return landmarks.astype(np.float32)


@dataclass(frozen=True)
class FaceFolder:
    """A checked face folder: its images' names and paths and their landmarks (images read lazily).

    Attributes:
        root: the folder.
        names: the names of list.txt (the first `limit` when opened with one).
        paths: each name's image file under `root/HR`.
        landmarks: N x 68 x 2 float32 (x, y) HR pixel coordinates.
        image_size: the side every image must have (HR_SIZE, 128).
    """

    root: Path
    names: tuple[str, ...]
    paths: tuple[Path, ...]
    landmarks: np.ndarray
    image_size: int = HR_SIZE

    @classmethod
    def open(cls, root: Path | str, *, limit: int | None = None, image_size: int = HR_SIZE) -> FaceFolder:
        """Check the layout and read the list and the landmarks.

        Args:
            root: the folder (HR/, landmarks68.npy, list.txt).
            limit: keep only the first `limit` faces (at least 1); the whole list and landmark array
                are still checked, the images of the kept faces only.
            image_size: the side every HR image must have.

        Raises:
            DatasetError: with the file and the problem.
        """
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"face folder not found: {root}")
        if limit is not None and limit < 1:
            raise DatasetError(f"limit must be at least 1, got {limit}")
        list_file, landmark_file, hr_dir = root / LIST_FILE, root / LANDMARKS_FILE, root / HR_DIR
        for required in (list_file, landmark_file, hr_dir):
            if not required.exists():
                raise DatasetError(
                    f"{root}: missing {required.name} (expected {HR_DIR}/, {LIST_FILE}, {LANDMARKS_FILE})"
                )
        names = _read_names(list_file)
        landmarks = _read_landmarks(landmark_file, len(names), list_file)
        if limit is not None:
            names, landmarks = names[:limit], landmarks[:limit]
        resolved = [_resolve_image(hr_dir, name) for name in names]
        missing = [name for name, path in zip(names, resolved, strict=True) if path is None]
        if missing:
            raise DatasetError(
                f"{root}: {len(missing)} image(s) listed in {LIST_FILE} are not in {HR_DIR}/, "
                f"e.g. {missing[0]!r}"
            )
        paths = tuple(path for path in resolved if path is not None)
        return cls(root=root, names=tuple(names), paths=paths, landmarks=landmarks, image_size=image_size)

    def __len__(self) -> int:
        return len(self.names)

    def read_image(self, index: int) -> np.ndarray:
        """HR face `index` as image_size x image_size x 3 uint8 RGB."""
        path = self.paths[index]
        try:
            with Image.open(path) as handle:
                image = handle.convert("RGB")
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            raise DatasetError(f"{path}: cannot read image: {error}") from error
        size = self.image_size
        if image.size != (size, size):
            raise DatasetError(f"{path} is {image.width}x{image.height}, expected {size}x{size}")
        return np.array(image, dtype=np.uint8)

    def read_images(self, start: int, stop: int) -> np.ndarray:
        """HR faces `start:stop` as N x image_size x image_size x 3 uint8 RGB."""
        return np.stack([self.read_image(index) for index in range(start, min(stop, len(self)))])

    def split(self, val_count: int, seed: int) -> tuple[list[int], list[int]]:
        """A fixed (train, validation) partition of the indices; `val_count` faces are held out."""
        if val_count >= len(self):
            raise DatasetError(f"val_count {val_count} leaves no training images out of {len(self)}")
        order = np.random.default_rng(seed).permutation(len(self))
        return sorted(order[val_count:].tolist()), sorted(order[:val_count].tolist())

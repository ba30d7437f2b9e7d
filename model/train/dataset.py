"""Training faces: a folder of 128x128 PNGs with 68 landmarks, turned into (LR, HR, heatmap) samples.

Folder layout (the `faces-300w-128` format):
    HR/<name>.png        128 x 128 RGB faces
    landmarks68.npy      float (N, 68, 2), (x, y) pixel coordinates in the 128 x 128 image
    list.txt             the N file names, one per line, in the order of the landmark array

LR images are made on the fly from the (augmented) HR with PIL bicubic 128 -> 16, as the authors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from facesr.model.landmarks import render_heatmaps
from facesr.model.normalization import images_to_tensor
from facesr.train.augment import apply_augmentation, draw_augmentation
from facesr.train.config import AugmentSection

HR_SIZE = 128
LR_SIZE = 16
NUM_LANDMARKS = 68


class DatasetError(ValueError):
    """The training data folder is missing or does not follow the expected layout."""


@dataclass(frozen=True)
class FaceFolder:
    """The file list and landmarks of a face folder (images are read lazily).

    Attributes:
        root: the folder.
        names: image file names (under `root/HR`).
        landmarks: N x 68 x 2 float32 (x, y) HR pixel coordinates.
    """

    root: Path
    names: tuple[str, ...]
    landmarks: np.ndarray

    @classmethod
    def open(cls, root: Path | str) -> FaceFolder:
        """Check the layout and read the list and landmarks; errors say what is wrong."""
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"training data folder not found: {root}")
        list_file, landmark_file = root / "list.txt", root / "landmarks68.npy"
        for required in (list_file, landmark_file, root / "HR"):
            if not required.exists():
                raise DatasetError(
                    f"{root}: missing {required.name} (expected HR/, list.txt, landmarks68.npy)"
                )
        names = tuple(
            line.strip() for line in list_file.read_text(encoding="utf-8").splitlines() if line.strip()
        )
        try:
            landmarks = np.load(landmark_file, allow_pickle=False)
        except ValueError as exc:
            raise DatasetError(f"{landmark_file}: not a plain numpy array: {exc}") from exc
        if landmarks.shape != (len(names), NUM_LANDMARKS, 2):
            raise DatasetError(
                f"{landmark_file}: shape {landmarks.shape} does not match {len(names)} names x 68 x 2"
            )
        if not np.isfinite(landmarks).all():
            raise DatasetError(f"{landmark_file}: contains NaN or infinite coordinates")
        missing = [name for name in names if not (root / "HR" / name).is_file()]
        if missing:
            raise DatasetError(f"{root / 'HR'}: {len(missing)} listed images are missing, e.g. {missing[0]}")
        if not names:
            raise DatasetError(f"{list_file}: lists no images")
        return cls(root=root, names=names, landmarks=landmarks.astype(np.float32))

    def __len__(self) -> int:
        return len(self.names)

    def read_image(self, index: int) -> np.ndarray:
        """HR face `index` as 128 x 128 x 3 uint8 RGB."""
        path = self.root / "HR" / self.names[index]
        try:
            with Image.open(path) as image:
                pixels = np.array(image.convert("RGB"))
        except OSError as exc:
            raise DatasetError(f"{path}: cannot read image: {exc}") from exc
        if pixels.shape != (HR_SIZE, HR_SIZE, 3):
            raise DatasetError(f"{path}: expected a {HR_SIZE}x{HR_SIZE} RGB image, got {pixels.shape}")
        return pixels

    def split(self, val_count: int, seed: int) -> tuple[list[int], list[int]]:
        """A fixed (train, validation) partition of the indices; `val_count` faces are held out."""
        if val_count >= len(self):
            raise DatasetError(f"val_count {val_count} leaves no training images out of {len(self)}")
        order = np.random.default_rng(seed).permutation(len(self))
        return sorted(order[val_count:].tolist()), sorted(order[:val_count].tolist())


def downscale_to_lr(hr: np.ndarray) -> np.ndarray:
    """128 x 128 x 3 uint8 -> 16 x 16 x 3 uint8 with PIL bicubic (antialiased), the paper's LR."""
    return np.array(Image.fromarray(hr).resize((LR_SIZE, LR_SIZE), Image.Resampling.BICUBIC))


def make_sample(hr: np.ndarray, landmarks: np.ndarray) -> dict[str, torch.Tensor]:
    """Model-space tensors for one face.

    Returns:
        lr: 3 x 16 x 16 float32, mean-subtracted RGB.
        hr: 3 x 128 x 128 float32, mean-subtracted RGB.
        heatmaps: 68 x 32 x 32 float32 in [0, 1], Gaussians (sigma 1) at landmarks / 4.
        landmarks: 68 x 2 float32 (x, y) HR pixel coordinates.
    """
    lr = downscale_to_lr(hr)
    heatmaps = np.asarray(render_heatmaps(landmarks), dtype=np.float32)
    return {
        "lr": images_to_tensor(lr[None])[0],
        "hr": images_to_tensor(hr[None])[0],
        "heatmaps": torch.from_numpy(heatmaps),
        "landmarks": torch.from_numpy(np.ascontiguousarray(landmarks, dtype=np.float32)),
    }


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The augmentation RNG of one sample in one epoch: independent of workers, order and resumes."""
    return np.random.default_rng([seed, epoch, index])


class AugmentedFaces(Dataset):
    """Training samples with the paper's augmentation, keyed by (epoch, index).

    Keys come from `EpochSampler`; the augmentation of a key is a pure function of
    (seed, epoch, index), so data is identical across worker counts and exact on resume.
    """

    def __init__(self, folder: FaceFolder, indices: list[int], augment: AugmentSection, seed: int) -> None:
        self.folder = folder
        self.indices = list(indices)
        self.augment = augment
        self.seed = seed

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, position = key
        folder_index = self.indices[position]
        hr = self.folder.read_image(folder_index)
        landmarks = self.folder.landmarks[folder_index]
        params = draw_augmentation(
            landmarks,
            HR_SIZE,
            sample_rng(self.seed, epoch, folder_index),
            hflip=self.augment.hflip,
            rot90=self.augment.rot90,
            distort=self.augment.distort,
        )
        hr, landmarks = apply_augmentation(hr, landmarks, params)
        return make_sample(hr, landmarks)


class PlainFaces(Dataset):
    """Un-augmented samples (validation), keyed by position in `indices`."""

    def __init__(self, folder: FaceFolder, indices: list[int]) -> None:
        self.folder = folder
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> dict[str, torch.Tensor]:
        folder_index = self.indices[position]
        return make_sample(self.folder.read_image(folder_index), self.folder.landmarks[folder_index])

"""Training samples: the faces of a `FaceFolder` turned into (LR, HR, heatmap) tensors.

The folder layout and its reader are `facesr.train.face_folder`. LR images are made on the fly from
the (augmented) HR with `facesr.model.preprocess.make_lr` (PIL bicubic 128 -> 16, as the authors), the
same function that makes the serving path's inputs.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from facesr.model.landmarks import render_heatmaps
from facesr.model.normalization import images_to_tensor
from facesr.model.preprocess import make_lr
from facesr.train.augment import apply_augmentation, draw_augmentation
from facesr.train.config import AugmentSection
from facesr.train.face_folder import FaceFolder


def make_sample(hr: np.ndarray, landmarks: np.ndarray) -> dict[str, torch.Tensor]:
    """Model-space tensors for one face.

    Returns:
        lr: 3 x 16 x 16 float32, mean-subtracted RGB.
        hr: 3 x 128 x 128 float32, mean-subtracted RGB.
        heatmaps: 68 x 32 x 32 float32 in [0, 1], Gaussians (sigma 1) at landmarks / 4.
        landmarks: 68 x 2 float32 (x, y) HR pixel coordinates.
    """
    lr = make_lr(hr)
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
            self.folder.image_size,
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

"""Test helpers: a synthetic face folder (HR/, list.txt, landmarks68.npy) and a first batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import default_collate

from facesr.train.config import TrainConfig
from facesr.train.dataset import AugmentedFaces
from facesr.train.distributed import DistributedContext
from facesr.train.face_folder import FaceFolder

#: A single CPU process.
CPU = DistributedContext(rank=0, world_size=1, device=torch.device("cpu"))


def write_face_folder(root: Path, count: int = 6, seed: int = 0) -> np.ndarray:
    """Write `count` smooth random 128x128 images with random landmarks; returns the landmarks.

    The images are low-frequency noise (a random 8x8 image upscaled), so a few optimisation steps
    already reduce the reconstruction error.
    """
    rng = np.random.default_rng(seed)
    (root / "HR").mkdir(parents=True)
    names = [f"face_{i:02d}.png" for i in range(count)]
    for name in names:
        coarse = Image.fromarray(rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8))
        coarse.resize((128, 128), Image.Resampling.BICUBIC).save(root / "HR" / name)
    (root / "list.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    landmarks = rng.uniform(30, 98, size=(count, 68, 2)).astype(np.float32)
    np.save(root / "landmarks68.npy", landmarks)
    return landmarks


def first_batch(config: TrainConfig, size: int = 2) -> dict[str, torch.Tensor]:
    """A collated batch of the first `size` faces of the config's folder (epoch 0 augmentation)."""
    folder = FaceFolder.open(config.data.root)
    data = AugmentedFaces(folder, list(range(size)), config.data.augment, seed=0)
    return default_collate([data[(0, i)] for i in range(size)])

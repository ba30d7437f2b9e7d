"""The sample tensors (their LR is the serving path's LR) and the resumable sampler."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from facesr.model.config import DICConfig
from facesr.model.input_policy import prepare_face
from facesr.model.landmarks import decode_heatmaps
from facesr.model.normalization import tensor_to_images
from facesr.model.preprocess import make_lr
from facesr.train.config import AugmentSection
from facesr.train.dataset import AugmentedFaces, PlainFaces
from facesr.train.evaluate import PAPER_DEGRADATION
from facesr.train.face_folder import FaceFolder
from facesr.train.sampler import EpochSampler
from tests.model.train.helpers import write_face_folder


@pytest.fixture
def folder(tmp_path: Path) -> FaceFolder:
    write_face_folder(tmp_path / "faces")
    return FaceFolder.open(tmp_path / "faces")


def test_sample_tensors_have_the_documented_shapes_and_are_consistent(folder: FaceFolder) -> None:
    sample = PlainFaces(folder, [0, 1])[1]
    assert sample["lr"].shape == (3, 16, 16) and sample["hr"].shape == (3, 128, 128)
    assert sample["heatmaps"].shape == (68, 32, 32) and sample["landmarks"].shape == (68, 2)
    hr = tensor_to_images(sample["hr"][None])[0]
    np.testing.assert_array_equal(hr, folder.read_image(1))  # HR round-trips exactly
    np.testing.assert_array_equal(tensor_to_images(sample["lr"][None])[0], make_lr(hr))
    decoded = decode_heatmaps(sample["heatmaps"][None])[0]
    np.testing.assert_allclose(decoded.numpy(), folder.landmarks[1], atol=0.3)


def test_augmented_samples_are_reproducible_per_epoch_and_index(folder: FaceFolder) -> None:
    data = AugmentedFaces(folder, list(range(len(folder))), AugmentSection(), seed=3)
    first, again = data[(2, 4)], data[(2, 4)]
    for key in first:
        torch.testing.assert_close(first[key], again[key], rtol=0, atol=0)
    other_epochs = [data[(epoch, 4)]["landmarks"] for epoch in range(3, 8)]
    assert any(not torch.equal(first["landmarks"], lm) for lm in other_epochs)


def test_augmented_heatmaps_match_the_augmented_landmarks(folder: FaceFolder) -> None:
    data = AugmentedFaces(folder, list(range(len(folder))), AugmentSection(), seed=0)
    for epoch in range(4):
        sample = data[(epoch, epoch % len(folder))]
        landmarks = sample["landmarks"]
        assert (landmarks >= 0).all() and (landmarks <= 127).all()
        decoded = decode_heatmaps(sample["heatmaps"][None])[0]
        inside = ((landmarks >= 4) & (landmarks <= 120)).all(dim=1)  # peaks not cut by the 32x32 grid
        assert inside.sum() > 50
        torch.testing.assert_close(decoded[inside], landmarks[inside], atol=0.3, rtol=0)


def test_training_lr_is_the_serving_lr_bit_for_bit(folder: FaceFolder) -> None:
    """One HR face: the training sample's LR, the evaluation LR and the input policy (API and CLI) agree."""
    config = DICConfig.tiny()
    for index in range(len(folder)):
        hr = folder.read_image(index)
        training = tensor_to_images(PlainFaces(folder, [index])[0]["lr"][None])[0]
        prepared = prepare_face(hr, size=config.lr_size)
        serving = prepared.lr_rgb
        evaluation = PAPER_DEGRADATION.apply(hr[None], config.lr_size)[0]
        assert (prepared.transform.fit, prepared.transform.side) == (None, config.hr_size)
        assert training.shape == serving.shape == (config.lr_size, config.lr_size, 3)
        np.testing.assert_array_equal(training, serving)
        np.testing.assert_array_equal(evaluation, serving)
        reference = np.asarray(Image.fromarray(hr).resize((16, 16), Image.Resampling.BICUBIC))
        np.testing.assert_array_equal(serving, reference)


def test_augmented_samples_are_made_by_the_same_degradation(folder: FaceFolder) -> None:
    data = AugmentedFaces(folder, list(range(len(folder))), AugmentSection(), seed=1)
    for epoch in range(3):
        sample = data[(epoch, 2)]
        hr = tensor_to_images(sample["hr"][None])[0]
        np.testing.assert_array_equal(tensor_to_images(sample["lr"][None])[0], prepare_face(hr).lr_rgb)


def test_sampler_resumes_mid_epoch_with_the_same_order() -> None:
    data = list(range(10))
    sampler = EpochSampler(data, num_replicas=1, rank=0, seed=1)
    sampler.set_position(epoch=2, skip=0)
    full = list(sampler)
    sampler.set_position(epoch=2, skip=4)
    assert list(sampler) == full[4:] and len(sampler) == 6
    assert all(epoch == 2 for epoch, _ in full) and sorted(i for _, i in full) == data
    sampler.set_position(epoch=3, skip=0)
    assert [i for _, i in sampler] != [i for _, i in full]


def test_sampler_shards_are_disjoint_across_ranks() -> None:
    data = list(range(12))
    shards = []
    for rank in range(3):
        sampler = EpochSampler(data, num_replicas=3, rank=rank, seed=0)
        sampler.set_position(epoch=0, skip=0)
        shards.append({index for _, index in sampler})
    assert set().union(*shards) == set(data) and sum(len(s) for s in shards) == len(data)


@pytest.mark.shared
def test_flip_keeps_each_eye_on_its_side_of_the_image_for_real_faces(shared_dir: Path) -> None:
    """36-41 is the eye on the image's left before and after a flip (the authors' loader broke this)."""
    folder = FaceFolder.open(shared_dir / "data" / "faces-300w-128")
    flip_only = AugmentSection(hflip=True, rot90=False, distort=None)
    data = AugmentedFaces(folder, list(range(0, len(folder), 15)), flip_only, seed=0)
    checked = flipped = 0
    for position in range(len(data)):
        original = folder.landmarks[data.indices[position]]
        if original[36:42, 0].mean() >= original[42:48, 0].mean():
            continue  # a strongly turned face; sides are ambiguous
        sample = data[(0, position)]
        landmarks = sample["landmarks"].numpy()
        assert landmarks[36:42, 0].mean() < landmarks[42:48, 0].mean()
        assert landmarks[0, 0] < landmarks[16, 0]  # jaw starts on the image's left
        flipped += int(not np.allclose(landmarks, original))
        checked += 1
    assert checked > 50 and flipped > 10

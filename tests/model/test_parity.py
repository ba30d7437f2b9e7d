"""Parity with the authors' code: their checkpoints, through our converter, give their outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from facesr.model.checkpoint import load_generator
from facesr.model.config import DICConfig
from facesr.model.inference import FaceSR
from facesr.model.normalization import images_to_tensor, tensor_to_images
from facesr.model.official import convert_official

pytestmark = pytest.mark.shared

SR_ATOL = 3e-5
HEATMAP_ATOL = 6e-5
IMAGE_NAMES = ("18241", "18249", "18257", "18265")


@pytest.fixture(scope="module")
def tiny_dir(shared_dir: Path) -> Path:
    path = shared_dir / "dic-reference" / "tiny"
    if not path.is_dir():
        pytest.skip(f"parity fixtures not found at {path}")
    return path


@pytest.fixture(scope="module", params=["official_dic_ckp.pth", "official_dicgan_ckp.pth"])
def converted(
    request: pytest.FixtureRequest, tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    destination = tmp_path_factory.mktemp("converted") / "tiny.safetensors"
    config, card = convert_official(tiny_dir / request.param, destination)
    assert config == DICConfig.tiny()
    assert card.parameters == 284_337
    return destination


def test_tensor_outputs_match_every_step(converted: Path, tiny_dir: Path) -> None:
    generator = load_generator(converted).generator
    x = torch.from_numpy(np.load(tiny_dir / "tensor_input.npy"))
    with torch.no_grad():
        sr_steps, heatmap_steps = generator(x)
    expected_sr = np.load(tiny_dir / "tensor_sr_steps.npy")
    expected_hm = np.load(tiny_dir / "tensor_heatmap_steps.npy")
    assert len(sr_steps) == len(heatmap_steps) == 4
    for step in range(4):
        np.testing.assert_allclose(sr_steps[step].numpy(), expected_sr[step], rtol=0, atol=SR_ATOL)
        np.testing.assert_allclose(heatmap_steps[step].numpy(), expected_hm[step], rtol=0, atol=HEATMAP_ATOL)


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _lr_faces(tiny_dir: Path) -> np.ndarray:
    return np.stack([_read(tiny_dir / f"lr_{name}.png") for name in IMAGE_NAMES])


def test_preprocessing_is_the_authors(tiny_dir: Path) -> None:
    ours = images_to_tensor(_lr_faces(tiny_dir)).numpy()
    np.testing.assert_array_equal(ours, np.load(tiny_dir / "image_input.npy"))


def test_real_faces_float_and_uint8_outputs(converted: Path, tiny_dir: Path) -> None:
    generator = load_generator(converted).generator
    with torch.no_grad():
        sr_steps, heatmap_steps = generator(images_to_tensor(_lr_faces(tiny_dir)))
    expected_float = np.load(tiny_dir / "image_sr_steps_float32.npy")
    expected_hm = np.load(tiny_dir / "image_heatmap_steps.npy")
    expected_uint8 = np.load(tiny_dir / "image_sr_steps_uint8.npy")
    for step in range(4):
        np.testing.assert_allclose(sr_steps[step].numpy(), expected_float[step], rtol=0, atol=SR_ATOL)
        np.testing.assert_allclose(heatmap_steps[step].numpy(), expected_hm[step], rtol=0, atol=HEATMAP_ATOL)
        ours = tensor_to_images(sr_steps[step]).astype(np.int16)
        theirs = expected_uint8[step].astype(np.int16)  # N x H x W x 3
        difference = np.abs(ours - theirs)
        assert difference.max() <= 1
        assert (difference > 0).mean() <= 1e-3


def test_engine_reproduces_expected_pngs(converted: Path, tiny_dir: Path) -> None:
    engine = FaceSR.from_checkpoint(converted, device="cpu")
    results = engine.enhance([_read(tiny_dir / f"lr_{name}.png") for name in IMAGE_NAMES])
    for name, result in zip(IMAGE_NAMES, results, strict=True):
        expected = _read(tiny_dir / f"expected_sr_{name}.png").astype(np.int16)
        difference = np.abs(result.image.astype(np.int16) - expected)
        assert result.resized_from is None
        assert difference.max() <= 1
        assert (difference > 0).mean() <= 1e-3


def test_discriminator_is_exported(tiny_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from facesr.model.lightcnn import LightCNN9Discriminator

    convert_official(
        tiny_dir / "official_dicgan_ckp.pth",
        tmp_path / "g.safetensors",
        discriminator_destination=tmp_path / "d.safetensors",
    )
    discriminator = LightCNN9Discriminator()
    discriminator.load_state_dict(load_file(tmp_path / "d.safetensors"), strict=True)
    official = torch.load(tiny_dir / "official_dicgan_ckp.pth", weights_only=True)["netD"]
    for key, tensor in discriminator.state_dict().items():
        torch.testing.assert_close(tensor, official[key.removeprefix("module.")], rtol=0, atol=0)
    assert sum(t.numel() for t in discriminator.state_dict().values()) == 5_485_921

"""The DICGAN stage: runs from a DIC checkpoint, trains G and D, perceptual features load safely."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from facesr.model.lightcnn import LightCNN9Features
from facesr.train.config import TrainConfig, parse_config
from facesr.train.perceptual import (
    HourglassFrontEnd,
    PerceptualWeightsError,
    adapt_grey_conv_to_rgb,
    load_lightcnn_features,
)
from facesr.train.stages import DICGANStage
from facesr.train.state import load_training_state
from facesr.train.trainer import STATE_FILE, build_generator, run_training
from tests.model.train.conftest import CONFIG_DIR, merged
from tests.model.train.helpers import CPU, first_batch


@pytest.fixture(scope="module")
def dic_checkpoint(tmp_path_factory: pytest.TempPathFactory, faces_dir: Path) -> Path:
    """A tiny DIC checkpoint from a 2-step run (the DICGAN starting point)."""
    data = yaml.safe_load((CONFIG_DIR / "tiny-test.yaml").read_text(encoding="utf-8"))
    data = merged(data, {"data": {"root": str(faces_dir), "val_count": 2}, "train": {"iterations": 2}})
    out = tmp_path_factory.mktemp("dic")
    result = run_training(parse_config(data), out, device="cpu", progress=False)
    assert result.final_checkpoint is not None
    return result.final_checkpoint


def gan_overrides(checkpoint: Path, **gan: object) -> dict:
    return {
        "name": "tiny-gan",
        "stage": "dicgan",
        "gan": {"init_checkpoint": str(checkpoint), **gan},
        "train": {"iterations": 2, "hg_frozen_until": 2},
        "logging": {"val_every": 2, "save_every": 2, "log_every": 1},
    }


@pytest.mark.parametrize("pixel_loss", ["per_step", "final_repeated"])
def test_dicgan_stage_trains_generator_and_discriminator(
    make_config: Callable[..., TrainConfig], dic_checkpoint: Path, tmp_path: Path, pixel_loss: str
) -> None:
    config = make_config(gan_overrides(dic_checkpoint, pixel_loss=pixel_loss))
    result = run_training(config, tmp_path / "gan", device="cpu", progress=False)
    assert result.step == 2 and result.final_checkpoint is not None
    state = load_training_state(tmp_path / "gan" / STATE_FILE)["stage"]
    initial = load_training_state(dic_checkpoint.parent / STATE_FILE)["stage"]["generator"]
    generator = state["generator"]
    assert any(not torch.equal(initial[k], generator[k]) for k in generator if not k.startswith("HG."))
    assert all(torch.equal(initial[k], generator[k]) for k in generator if k.startswith("HG.")), (
        "HG stays frozen"
    )
    assert state["d_optimizer"]["state"], "the discriminator was updated"
    records = (tmp_path / "gan" / "metrics.jsonl").read_text(encoding="utf-8")
    for name in ("adversarial", "perceptual", "discriminator", "d_real", "d_fake"):
        assert f'"{name}"' in records


def test_dicgan_resume_is_exact(
    make_config: Callable[..., TrainConfig], dic_checkpoint: Path, tmp_path: Path
) -> None:
    overrides = gan_overrides(dic_checkpoint)
    full = make_config({**overrides, "train": {"iterations": 2, "hg_frozen_until": 2}})
    half = make_config({**overrides, "train": {"iterations": 1, "hg_frozen_until": 2}})
    run_training(full, tmp_path / "straight", device="cpu", progress=False)
    run_training(half, tmp_path / "split", device="cpu", progress=False)
    run_training(full, tmp_path / "split", resume=True, device="cpu", progress=False)
    a = load_training_state(tmp_path / "straight" / STATE_FILE)["stage"]
    b = load_training_state(tmp_path / "split" / STATE_FILE)["stage"]
    for part in ("generator", "discriminator"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), f"{part}.{key}"


def test_grey_lightcnn_weights_are_adapted_to_rgb(tmp_path: Path) -> None:
    """A grey face-recognition trunk gives the same features on RGB as on that image's luma."""
    grey = LightCNN9Features(in_channels=1)
    path = tmp_path / "lightcnn9_grey.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in grey.state_dict().items()}}, path)
    rgb = load_lightcnn_features(path)
    image = torch.rand(2, 3, 128, 128)
    luma = (image * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
    with torch.no_grad():
        torch.testing.assert_close(rgb(image), grey(luma), atol=1e-4, rtol=1e-4)
    assert not any(p.requires_grad for p in rgb.parameters())
    assert adapt_grey_conv_to_rgb(torch.ones(4, 1, 5, 5)).shape == (4, 3, 5, 5)


def test_rgb_lightcnn_weights_load_as_they_are(tmp_path: Path) -> None:
    trunk = LightCNN9Features(in_channels=3)
    path = tmp_path / "LightCNN_feature.pth"
    torch.save(trunk.state_dict(), path)
    loaded = load_lightcnn_features(path)
    image = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(loaded(image), trunk(image))


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"features.0.filter.weight": torch.zeros(3)}, "do not fit"),
        ({"unrelated": Path("x")}, "cannot be loaded safely"),
        ([1, 2, 3], "state dict of tensors"),
    ],
)
def test_bad_lightcnn_weights_are_refused(tmp_path: Path, payload: object, message: str) -> None:
    path = tmp_path / "weights.pth"
    torch.save(payload, path)
    with pytest.raises(PerceptualWeightsError, match=message):
        load_lightcnn_features(path)


def test_bf16_autocast_path_keeps_float32_weights_and_finite_losses(
    make_config: Callable[..., TrainConfig], dic_checkpoint: Path
) -> None:
    """The AMP code path (bf16 autocast; on CUDA in real runs) exercised on the CPU."""
    config = make_config(gan_overrides(dic_checkpoint))
    generator = build_generator(config)
    stage = DICGANStage(config, generator, CPU, HourglassFrontEnd(generator))
    stage.precision.bf16 = True  # what `train.amp` does on CUDA and on bf16-capable CPUs
    seen: list[torch.dtype] = []
    generator.conv_out.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    parts = stage.train_step(first_batch(config), 0)
    assert torch.bfloat16 in seen, "the generator ran under bf16 autocast"
    assert all(torch.isfinite(value) for value in parts.values())
    assert all(p.dtype == torch.float32 for p in generator.parameters())
    assert all(p.dtype == torch.float32 for p in stage.discriminator_module.parameters())

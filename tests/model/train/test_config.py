"""Training-config validation: the shipped configs load, bad ones are refused with clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from facesr.model.config import DICConfig
from facesr.train.config import ConfigError, load_config, parse_config
from facesr.train.export import model_card
from tests.model.train.conftest import CONFIG_DIR, merged

DIC_CONFIGS = ["dic-helen", "dic-celeba", "cpu-reduced", "tiny-test"]
DICGAN_CONFIGS = ["dicgan-helen", "dicgan-celeba"]


def read(name: str) -> dict[str, Any]:
    return yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", DIC_CONFIGS)
def test_shipped_dic_configs_load(name: str) -> None:
    config = load_config(CONFIG_DIR / f"{name}.yaml")
    assert config.name == name and config.stage == "dic"
    assert "helen-50" not in str(config.data.root), "never train on the test set"


@pytest.mark.parametrize("name", DICGAN_CONFIGS)
def test_shipped_dicgan_configs_load_once_their_dic_checkpoint_exists(name: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="init_checkpoint not found"):
        load_config(CONFIG_DIR / f"{name}.yaml")
    checkpoint = tmp_path / "dic.safetensors"
    checkpoint.write_bytes(b"placeholder")
    config = parse_config(merged(read(name), {"gan": {"init_checkpoint": str(checkpoint)}}))
    assert config.stage == "dicgan" and config.gan is not None
    assert config.gan.adversarial == 0.005 and config.gan.perceptual == 0.1
    assert config.train.hg_frozen_until >= config.train.iterations  # the authors never release the HG


def test_paper_configs_follow_the_paper() -> None:
    helen, celeba = load_config(CONFIG_DIR / "dic-helen.yaml"), load_config(CONFIG_DIR / "dic-celeba.yaml")
    for config in (helen, celeba):
        assert config.dic_config() == DICConfig.paper()
        assert (config.train.batch_size, config.train.iterations) == (8, 150_000)
        assert config.optim.milestones == [10_000, 20_000, 40_000, 80_000] and config.optim.lr == 1e-4
        assert (config.loss.pixel, config.loss.heatmap) == (1.0, 0.1)
    assert helen.train.hg_frozen_until == 20_000 and celeba.train.hg_frozen_until == 2_000
    assert helen.data.augment.distort == (0.66, 1.33) and celeba.data.augment.distort is None


def test_cpu_config_is_smaller_than_the_paper() -> None:
    config = load_config(CONFIG_DIR / "cpu-reduced.yaml")
    assert config.dic_config().num_features < DICConfig.paper().num_features


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"learning_rate": 1e-4}, "learning_rate"),
        ({"optim": {"lr": 1e-4, "momentum": 0.9}}, r"optim\.momentum"),
        ({"train": {"batch_size": 0}}, r"train\.batch_size"),
        ({"optim": {"milestones": [20, 10]}}, "strictly increasing"),
        ({"data": {"augment": {"distort": [1.5, 1.0]}}}, "distort"),
        ({"model": {"preset": "huge"}}, r"model\.preset"),
        ({"model": {"hg_num_features": 30}}, "multiple of 4"),
        ({"stage": "dicgan"}, "needs a 'gan' section"),
        ({"name": "../escape"}, "name"),
        ({"name": "n" * 65}, r"name.*at most 64"),  # longer names cannot go on a model card
        ({"data": {"licence": ""}}, r"data\.licence"),
    ],
)
def test_invalid_configs_are_refused_with_the_offending_key(
    tiny_config_data: dict[str, Any], overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(merged(tiny_config_data, overrides))


def gan_section(checkpoint: Path, **features: Any) -> dict[str, Any]:
    return {"stage": "dicgan", "gan": {"init_checkpoint": str(checkpoint), "perceptual_features": features}}


def test_missing_perceptual_weights_file_is_refused(tiny_config_data: dict[str, Any], tmp_path: Path) -> None:
    checkpoint = tmp_path / "dic.safetensors"
    checkpoint.write_bytes(b"placeholder")
    missing = tmp_path / "LightCNN_feature.pth"
    with pytest.raises(ConfigError, match="perceptual weights file not found"):
        parse_config(
            merged(tiny_config_data, gan_section(checkpoint, source="lightcnn", weights=str(missing)))
        )
    with pytest.raises(ConfigError, match=r"needs perceptual\.weights"):
        parse_config(merged(tiny_config_data, gan_section(checkpoint, source="lightcnn")))
    missing.write_bytes(b"x")
    config = parse_config(
        merged(tiny_config_data, gan_section(checkpoint, source="lightcnn", weights=str(missing)))
    )
    assert config.gan.perceptual_features.weights == missing


def test_yaml_errors_and_missing_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listing)


def test_resolved_config_round_trips(tiny_config_data: dict[str, Any]) -> None:
    config = parse_config(tiny_config_data)
    again = parse_config(yaml.safe_load(config.to_yaml()))
    assert again == config


def test_a_64_character_name_goes_on_the_model_card(tiny_config_data: dict[str, Any]) -> None:
    config = parse_config(merged(tiny_config_data, {"name": "n" * 64}))
    card = model_card(config, step=1, metrics={}, train_count=8, val_count=2)
    assert card.name == config.name


@pytest.mark.parametrize("name", ["dic-celeba", "dicgan-celeba"])
def test_celeba_configs_carry_the_terms_of_celeba_not_300w(name: str, tmp_path: Path) -> None:
    checkpoint = tmp_path / "dic.safetensors"
    checkpoint.write_bytes(b"placeholder")
    overrides = {"gan": {"init_checkpoint": str(checkpoint)}} if name.startswith("dicgan") else {}
    config = parse_config(merged(read(name), overrides))
    card = model_card(config, step=1, metrics={}, train_count=1, val_count=1)
    assert "CelebA" in card.licence and "300-W" not in card.licence
    assert "non-commercial" in card.licence


def test_helen_configs_carry_the_300w_terms() -> None:
    for name in ("dic-helen", "cpu-reduced"):
        licence = load_config(CONFIG_DIR / f"{name}.yaml").data.licence
        assert "300-W" in licence and "non-commercial" in licence

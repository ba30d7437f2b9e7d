"""The safetensors checkpoint format: round trip, metadata, and refusal of bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from facesr.model.checkpoint import ModelCard, load_checkpoint, load_generator, read_card, save_checkpoint
from facesr.model.config import DICConfig
from facesr.model.errors import CheckpointError
from facesr.model.generator import DICGenerator


def _card(**overrides: object) -> ModelCard:
    base = dict(
        name="tiny-test",
        config={},
        provenance="unit test",
        training_data="none",
        metrics={"psnr_y": 1.0},
        licence="MIT",
    )
    return ModelCard(**{**base, **overrides})


@pytest.fixture
def tiny_generator() -> DICGenerator:
    torch.manual_seed(0)
    return DICGenerator(DICConfig.tiny())


def test_round_trip_fp32_is_exact(tiny_generator: DICGenerator, tmp_path: Path) -> None:
    path = tmp_path / "tiny.safetensors"
    card = save_checkpoint(path, tiny_generator, DICConfig.tiny(), _card())
    loaded = load_checkpoint(path)
    assert loaded.config == DICConfig.tiny()
    assert loaded.card == card
    assert card.parameters == 284_337 and card.config == DICConfig.tiny().to_dict()
    for key, tensor in tiny_generator.state_dict().items():
        torch.testing.assert_close(loaded.state_dict[key], tensor, rtol=0, atol=0)
    assert read_card(path) == card
    assert len(loaded.sha256) == 64


def test_fp16_storage_halves_the_file_and_loads_as_fp32(tiny_generator: DICGenerator, tmp_path: Path) -> None:
    full, half = tmp_path / "fp32.safetensors", tmp_path / "fp16.safetensors"
    save_checkpoint(full, tiny_generator, DICConfig.tiny(), _card())
    save_checkpoint(half, tiny_generator, DICConfig.tiny(), _card(), dtype=torch.float16)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded = load_generator(half)
    generator, card = loaded.generator, loaded.card
    assert card.name == "tiny-test" and loaded.sha256 == load_checkpoint(half).sha256
    assert not generator.training
    weight = generator.state_dict()["conv_in.0.weight"]
    assert weight.dtype == torch.float32
    torch.testing.assert_close(weight, tiny_generator.state_dict()["conv_in.0.weight"], atol=1e-3, rtol=1e-3)


def test_metadata_is_plain_json(tiny_generator: DICGenerator, tmp_path: Path) -> None:
    path = tmp_path / "tiny.safetensors"
    save_checkpoint(path, tiny_generator, DICConfig.tiny(), _card())
    header_length = int.from_bytes(path.read_bytes()[:8], "little")
    header = json.loads(path.read_bytes()[8 : 8 + header_length])
    card = json.loads(header["__metadata__"]["card"])
    assert card["licence"] == "MIT" and card["config"]["num_features"] == 8
    assert card["normalization"]["mean"] == [0.509, 0.424, 0.378]


def test_refuses_tensors_that_do_not_fit_the_config(tiny_generator: DICGenerator, tmp_path: Path) -> None:
    path = tmp_path / "tiny.safetensors"
    save_checkpoint(path, tiny_generator, DICConfig.tiny(), _card())
    # Rewrite the file claiming a wider config than its tensors hold.
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    card = json.loads(metadata["card"])
    card["config"]["num_features"] = 16
    metadata["card"] = json.dumps(card)
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(CheckpointError, match=r"do not fit the configuration.*conv_in\.0\.weight"):
        load_checkpoint(path)


def test_save_refuses_a_mismatched_state_dict(tiny_generator: DICGenerator, tmp_path: Path) -> None:
    state = tiny_generator.state_dict()
    del state["out.0.weight"]
    with pytest.raises(CheckpointError, match=r"missing out\.0\.weight"):
        save_checkpoint(tmp_path / "x.safetensors", state, DICConfig.tiny(), _card())


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"\xff" * 64])
def test_refuses_corrupt_files(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="unreadable or corrupt"):
        load_checkpoint(path)


def test_refuses_a_truncated_file(tiny_generator: DICGenerator, tmp_path: Path) -> None:
    path = tmp_path / "tiny.safetensors"
    save_checkpoint(path, tiny_generator, DICConfig.tiny(), _card())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="unreadable or corrupt"):
        load_checkpoint(path)


def test_refuses_foreign_safetensors_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="not a facesr checkpoint"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "absent.safetensors")


def test_card_validation() -> None:
    with pytest.raises(ValueError, match="name"):
        _card(name="bad name with spaces")
    with pytest.raises(ValueError, match="extra"):
        ModelCard(name="x", config={}, unexpected=1)

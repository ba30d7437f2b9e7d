"""Conversion of the authors' checkpoint formats, built synthetically from the full-config key list."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from facesr.model.checkpoint import load_checkpoint
from facesr.model.config import DICConfig
from facesr.model.errors import CheckpointError
from facesr.model.official import convert_official, read_official


def _full_state_dict(shared_dir: Path) -> dict[str, torch.Tensor]:
    listing = shared_dir / "dic-reference" / "full" / "state_dict_keys.tsv"
    if not listing.is_file():
        pytest.skip(f"full-config key list not found at {listing}")
    generator = torch.Generator().manual_seed(0)
    state = {}
    for line in listing.read_text().splitlines():
        key, shape, numel = line.split("\t")
        dims = () if shape == "scalar" else tuple(int(d) for d in shape.split("x"))
        state[key] = torch.randn(dims, generator=generator)
        assert state[key].numel() == int(numel)
    return state


@pytest.mark.shared
@pytest.mark.parametrize("layout", ["dic", "dicgan", "dataparallel"])
def test_full_key_list_converts_to_the_paper_config(shared_dir: Path, tmp_path: Path, layout: str) -> None:
    state = _full_state_dict(shared_dir)
    if layout == "dic":
        payload = {"step": 0, "state_dict": state, "best_pred": 0.0}
    elif layout == "dicgan":
        payload = {"netG": state, "netD": {"classifier.2.bias": torch.zeros(1)}, "optimizer_G": {}}
    else:
        payload = {"state_dict": {f"module.{k}": v for k, v in state.items()}}
    source = tmp_path / "official.pth"
    torch.save(payload, source)
    config, card = convert_official(source, tmp_path / "paper.safetensors")
    assert config == DICConfig.paper()
    assert card.parameters == 21_803_849
    loaded = load_checkpoint(tmp_path / "paper.safetensors")
    assert loaded.config == DICConfig.paper()
    torch.testing.assert_close(
        loaded.state_dict["HG.hg.res_center.conv_block.2.weight"],
        state["HG.hg.res_center.conv_block.2.weight"],
        rtol=0,
        atol=0,
    )


@pytest.mark.shared
def test_num_steps_is_taken_from_the_option(shared_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "official.pth"
    torch.save({"state_dict": _full_state_dict(shared_dir)}, source)
    config, _ = convert_official(source, tmp_path / "six.safetensors", num_steps=6)
    assert config == DICConfig.paper(num_steps=6)


def _tiny_state() -> dict[str, torch.Tensor]:
    from facesr.model.generator import DICGenerator

    return DICGenerator(DICConfig.tiny()).state_dict()


def test_missing_tensor_is_a_clear_error(tmp_path: Path) -> None:
    state = _tiny_state()
    del state["block.compress_out.0.weight"]
    torch.save({"state_dict": state}, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match=r"missing block\.compress_out\.0\.weight"):
        convert_official(tmp_path / "broken.pth", tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_wrong_shape_is_a_clear_error(tmp_path: Path) -> None:
    state = _tiny_state()
    state["out.0.weight"] = torch.zeros(8, 8, 4, 4)
    torch.save({"state_dict": state}, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match=r"out\.0\.weight: file has \(8, 8, 4, 4\)"):
        convert_official(tmp_path / "broken.pth", tmp_path / "out.safetensors")


class _Payload:
    """A pickled custom object: weights_only loading must refuse it."""


def test_arbitrary_pickles_are_never_loaded(tmp_path: Path) -> None:
    torch.save({"state_dict": _Payload()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        read_official(tmp_path / "evil.pth")


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"something": torch.zeros(1), "other": 1}, "not a DIC/DICGAN checkpoint"),
        ([1, 2, 3], "expected a dict"),
    ],
)
def test_non_checkpoints_are_refused(tmp_path: Path, payload: object, message: str) -> None:
    torch.save(payload, tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match=message):
        read_official(tmp_path / "x.pth")


def test_cli_exits_non_zero_with_a_message(tmp_path: Path) -> None:
    source = tmp_path / "notes.pth"
    source.write_text("these are not weights")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "facesr.service.cli",
            "convert-official",
            str(source),
            str(tmp_path / "o.safetensors"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "not a checkpoint that loads safely" in result.stderr

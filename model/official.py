"""Conversion of the authors' DIC / DICGAN `.pth` checkpoints into facesr checkpoints.

DIC files hold `state_dict`; DICGAN files hold `netG` (and `netD`). Keys may carry DataParallel's
`module.` prefix. Files are read with `torch.load(weights_only=True)`: no code is unpickled.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from facesr.model.checkpoint import ModelCard, check_state_dict, file_sha256, save_checkpoint
from facesr.model.config import DICConfig
from facesr.model.errors import CheckpointError
from facesr.model.lightcnn import LightCNN9Discriminator

AUTHORS_REPO = "Maclory/Deep-Iterative-Collaboration"


@dataclass(frozen=True)
class OfficialCheckpoint:
    """The generator (and discriminator, for DICGAN files) of an authors' checkpoint."""

    kind: str  # "DIC" or "DICGAN"
    generator: dict[str, torch.Tensor]
    discriminator: dict[str, torch.Tensor] | None


def _load_reason(error: Exception) -> str:
    """The useful line of a torch.load failure (its safe-loading advice is not for us to follow)."""
    text = str(error)
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()[0].strip()
        return (
            f"torch.load(weights_only=True) refused it ({detail}); facesr never unpickles arbitrary objects"
        )
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


def _strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("module."): v for k, v in state.items()}


def _tensor_dict(value: object, what: str, source: Path) -> dict[str, torch.Tensor]:
    if (
        not isinstance(value, dict)
        or not value
        or not all(isinstance(v, torch.Tensor) for v in value.values())
    ):
        raise CheckpointError(f"{source}: `{what}` is not a state dict of tensors")
    return _strip_prefix(value)


def read_official(source: str | Path) -> OfficialCheckpoint:
    """Load an authors' checkpoint safely and pick out its state dicts. Raises CheckpointError."""
    source = Path(source)
    if not source.is_file():
        raise CheckpointError(f"checkpoint not found: {source}")
    try:
        payload = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as error:  # the restricted unpickler fails on junk bytes in many different ways
        raise CheckpointError(
            f"{source}: not a checkpoint that loads safely: {_load_reason(error)}"
        ) from error
    if not isinstance(payload, dict):
        raise CheckpointError(f"{source}: expected a dict checkpoint, found {type(payload).__name__}")
    if "netG" in payload:
        generator = _tensor_dict(payload["netG"], "netG", source)
        discriminator = _tensor_dict(payload["netD"], "netD", source) if "netD" in payload else None
        return OfficialCheckpoint("DICGAN", generator, discriminator)
    if "state_dict" in payload:
        return OfficialCheckpoint("DIC", _tensor_dict(payload["state_dict"], "state_dict", source), None)
    if payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        return OfficialCheckpoint("DIC", _strip_prefix(payload), None)
    raise CheckpointError(
        f"{source}: not a DIC/DICGAN checkpoint (no `state_dict` or `netG`; keys: {sorted(payload)[:8]})"
    )


def _count_indexed(state: dict[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    indices = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    return max(indices) + 1 if indices else 0


def infer_config(state: dict[str, torch.Tensor], num_steps: int) -> DICConfig:
    """Every size the tensors tell; the number of steps is not in the weights and is given."""
    try:
        num_features = state["conv_in.0.weight"].shape[0] // 4
        hg_head = state["HG.hg_conv_out.2.weight"]
        config = DICConfig(
            num_features=num_features,
            num_groups=_count_indexed(state, "first_block.upBlocks"),
            num_steps=num_steps,
            hg_num_features=hg_head.shape[1],
            num_keypoints=hg_head.shape[0],
            num_fusion_blocks=_count_indexed(state, "block.fusion_block.resnet"),
            in_channels=state["conv_in.0.weight"].shape[1],
        )
    except KeyError as error:
        raise CheckpointError(f"not a DIC generator: tensor {error} is missing") from error
    except ValueError as error:
        raise CheckpointError(f"the tensors do not describe a valid DIC generator: {error}") from error
    return config


def convert_official(
    source: str | Path,
    destination: str | Path,
    *,
    num_steps: int = 4,
    name: str | None = None,
    discriminator_destination: str | Path | None = None,
) -> tuple[DICConfig, ModelCard]:
    """Convert an authors' checkpoint to a facesr `.safetensors` checkpoint (float32, exact weights).

    Args:
        source: the authors' `.pth` (DIC `state_dict` or DICGAN `netG`/`netD`).
        destination: the facesr checkpoint to write.
        num_steps: the iteration count (not stored in the weights; the paper uses 4).
        name: model name for the card (default: derived from the file name).
        discriminator_destination: where to write a DICGAN file's discriminator (safetensors), if wanted.
    """
    source = Path(source)
    official = read_official(source)
    config = infer_config(official.generator, num_steps)
    check_state_dict(config, official.generator, str(source))
    model_name = name or re.sub(r"[^A-Za-z0-9._-]+", "-", source.stem).strip("-._") or "official"
    card = ModelCard(
        name=model_name,
        description=f"The authors' {official.kind} generator, converted from their release.",
        architecture=official.kind,
        config=config.to_dict(),
        provenance=f"converted from {source.name} (sha256 {file_sha256(source)}) of {AUTHORS_REPO}",
        training_data="as released by the authors (CelebA or Helen, per the file)",
        licence="code MIT (authors); the weights carry the terms of the authors' release and training data",
    )
    card = save_checkpoint(destination, official.generator, config, card, dtype=torch.float32)
    if discriminator_destination is not None:
        if official.discriminator is None:
            raise CheckpointError(f"{source}: has no discriminator (`netD`) to export")
        discriminator = LightCNN9Discriminator()
        try:
            discriminator.load_state_dict(official.discriminator, strict=True)
        except RuntimeError as error:
            raise CheckpointError(f"{source}: netD does not fit LightCNN-9: {error}") from error
        save_file(
            {k: v.contiguous() for k, v in discriminator.state_dict().items()},
            str(discriminator_destination),
            metadata={"format": "facesr.lightcnn9-discriminator/1", "source": source.name},
        )
    return config, card

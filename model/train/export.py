"""Export of trained generators in the serving format (safetensors + model card), config beside it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from facesr.model.checkpoint import ModelCard, save_checkpoint
from facesr.model.generator import DICGenerator
from facesr.train.config import TrainConfig


def model_card(
    config: TrainConfig, *, step: int, metrics: dict[str, Any], train_count: int, val_count: int
) -> ModelCard:
    """The card of a checkpoint exported from a training run."""
    architecture = "DICGAN" if config.stage == "dicgan" else "DIC"
    if config.gan is not None:
        provenance = f"fine-tuned from {config.gan.init_checkpoint.name} with `facesr train`"
    else:
        starts = [
            f"{role} from {path.name}"
            for role, path in (("weights", config.init.weights), ("alignment branch", config.init.alignment))
            if path is not None
        ]
        provenance = "trained with `facesr train`, " + (
            "starting with " + " and ".join(starts) if starts else "from scratch"
        )
    description = f"{architecture} face super-resolution (x8, 16x16 -> 128x128), run '{config.name}'"
    if config.stage == "align":
        description = (
            f"alignment branch pre-trained alone (stage 'align', run '{config.name}'); the SR branch is "
            "untrained: not for serving, use it as init.alignment of a DIC run"
        )
    return ModelCard(
        name=config.name,
        description=description,
        architecture=architecture,
        config={},  # filled in from the generator config by save_checkpoint
        provenance=provenance,
        training_data=(
            f"{config.data.root.name}: {train_count} training faces (augmentation: "
            f"{config.data.augment.model_dump(mode='json')}), {val_count} held out for validation"
        ),
        training={"stage": config.stage, "step": step, "config": config.to_plain()},
        metrics=metrics,
        licence=config.data.licence,
    )


def export_generator(
    path: Path,
    generator: DICGenerator,
    config: TrainConfig,
    card: ModelCard,
    *,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write `path` (.safetensors) and the resolved training config beside it (`<stem>.config.yaml`)."""
    save_checkpoint(path, generator, generator.config, card, dtype=dtype)
    path.with_name(f"{path.stem}.config.yaml").write_text(config.to_yaml(), encoding="utf-8")
    return path

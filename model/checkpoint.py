"""facesr checkpoints: one `.safetensors` file whose metadata is the model card.

Loading never unpickles: tensors come from safetensors and the card from its JSON metadata. A file
whose tensors do not fit its configuration is refused with the first mismatches named.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from facesr.model.config import DICConfig
from facesr.model.errors import CheckpointError
from facesr.model.generator import DICGenerator
from facesr.model.normalization import RGB_MEAN

FORMAT = "facesr.dic/1"
_MAX_REPORTED = 6


class ModelCard(BaseModel):
    """What a checkpoint is: stored in the file's metadata and served by `GET /v1/models`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str = ""
    architecture: str = "DIC"
    config: dict[str, Any]
    normalization: dict[str, Any] = Field(
        default_factory=lambda: {"input": "RGB uint8 * (1/255) - mean", "mean": list(RGB_MEAN), "std": 1.0}
    )
    scale: int = 8
    parameters: int = 0
    provenance: str = ""
    training_data: str = ""
    training: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    licence: str = ""
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A checkpoint read from disk: its configuration, float32 tensors, card and file digest."""

    config: DICConfig
    state_dict: dict[str, torch.Tensor]
    card: ModelCard
    sha256: str


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_state_dict(config: DICConfig, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Raise CheckpointError unless `state_dict` has exactly the keys and shapes `config` needs."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in DICGenerator(config).state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state_dict.items()}
    problems = [f"missing {k} {expected[k]}" for k in expected if k not in found]
    problems += [f"unexpected {k} {found[k]}" for k in found if k not in expected]
    problems += [
        f"{k}: file has {found[k]}, config needs {expected[k]}"
        for k in expected
        if k in found and found[k] != expected[k]
    ]
    if problems:
        shown = "; ".join(problems[:_MAX_REPORTED])
        more = f" (and {len(problems) - _MAX_REPORTED} more)" if len(problems) > _MAX_REPORTED else ""
        raise CheckpointError(
            f"{source}: tensors do not fit the configuration {config.to_dict()}: {shown}{more}"
        )


def save_checkpoint(
    path: str | Path,
    weights: nn.Module | dict[str, torch.Tensor],
    config: DICConfig,
    card: ModelCard | dict[str, Any],
    *,
    dtype: torch.dtype = torch.float32,
) -> ModelCard:
    """Write a generator checkpoint and return the card stored in it.

    Args:
        path: destination `.safetensors` file.
        weights: the generator or its state dict (checked against `config`).
        config: the generator's configuration (also written into the card).
        card: the model card; `config` and `parameters` are filled in from the weights.
        dtype: storage dtype of floating tensors (float16 halves the size; loading returns float32).
    """
    path = Path(path)
    state = weights.state_dict() if isinstance(weights, nn.Module) else dict(weights)
    check_state_dict(config, state, str(path))
    tensors = {
        k: (v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu()).contiguous()
        for k, v in state.items()
    }
    card_data = card.model_dump() if isinstance(card, ModelCard) else dict(card)
    card_data["config"] = config.to_dict()
    card_data["parameters"] = int(sum(v.numel() for v in tensors.values()))
    card_data.setdefault("scale", config.scale)
    try:
        final_card = ModelCard(**card_data)
    except ValidationError as error:
        raise CheckpointError(f"invalid model card: {error}") from error
    metadata = {
        "format": FORMAT,
        "card": final_card.model_dump_json(),
        "dtype": str(dtype).removeprefix("torch."),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return final_card


def load_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """Read and validate a facesr checkpoint (never unpickles). Raises CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise CheckpointError(
                    f"{path}: not a facesr checkpoint (metadata format {metadata.get('format')!r}, "
                    f"expected {FORMAT!r}); convert the authors' files with `facesr convert-official`"
                )
            card = ModelCard.model_validate_json(metadata["card"])
            config = DICConfig.from_dict(card.config)
            state = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except CheckpointError:
        raise
    except (SafetensorError, OSError, ValueError, KeyError, ValidationError) as error:
        raise CheckpointError(f"{path}: unreadable or corrupt checkpoint: {error}") from error
    check_state_dict(config, state, str(path))
    state = {k: v.to(torch.float32) if v.is_floating_point() else v for k, v in state.items()}
    return LoadedCheckpoint(config=config, state_dict=state, card=card, sha256=file_sha256(path))


@dataclass(frozen=True)
class LoadedGenerator:
    """A checkpoint's generator, built from its card and holding its weights (float32, eval mode)."""

    generator: DICGenerator
    card: ModelCard
    sha256: str

    @property
    def config(self) -> DICConfig:
        """The generator's configuration (the card's)."""
        return self.generator.config


def load_generator(
    path: str | Path, device: torch.device | str = "cpu", *, config: DICConfig | None = None
) -> LoadedGenerator:
    """The one checkpoint -> generator loader, used by the inference engine and the trainer.

    Reads the file (never unpickles), checks its card and tensors (`load_checkpoint`), builds the
    `DICGenerator` of the card's configuration and loads the weights strictly.

    Args:
        path: a facesr `.safetensors` checkpoint.
        device: where the generator is put (in eval mode).
        config: when given, the checkpoint's configuration must equal it.

    Raises:
        CheckpointError: the file is missing, corrupt, not ours, or (with `config`) of another model.
    """
    loaded = load_checkpoint(path)
    if config is not None and loaded.config != config:
        raise CheckpointError(
            f"{path}: its model {loaded.config.to_dict()} does not fit the required {config.to_dict()}"
        )
    generator = DICGenerator(loaded.config)
    generator.load_state_dict(loaded.state_dict, strict=True)
    return LoadedGenerator(generator=generator.to(device).eval(), card=loaded.card, sha256=loaded.sha256)


def read_card(path: str | Path) -> ModelCard:
    """The model card of a checkpoint, reading only its header (no tensors are loaded)."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
        if metadata.get("format") != FORMAT:
            raise CheckpointError(f"{path}: not a facesr checkpoint")
        return ModelCard.model_validate_json(metadata["card"])
    except CheckpointError:
        raise
    except (SafetensorError, OSError, ValueError, KeyError, ValidationError) as error:
        raise CheckpointError(f"{path}: unreadable or corrupt checkpoint: {error}") from error


def card_summary(card: ModelCard) -> dict[str, Any]:
    """A JSON-able dict of the card (for APIs and reports)."""
    return json.loads(card.model_dump_json())

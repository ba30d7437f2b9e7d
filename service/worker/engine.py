"""What the worker needs from a model, and the one way the service turns checkpoints into engines."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from facesr.model.checkpoint import ModelCard
from facesr.model.config import DICConfig
from facesr.model.device import dtype_name
from facesr.model.errors import CheckpointError
from facesr.model.inference import FaceSR
from facesr.model.landmark_quality import LandmarkQuality, landmark_quality
from facesr.model.runtime import GraphMode
from facesr.service.settings import ServiceSettings
from facesr.service.startup import StartupError, check_checkpoints


class Engine(Protocol):
    """What the worker needs from a model (:class:`facesr.model.inference.FaceSR` is one)."""

    model_id: str
    device: torch.device
    dtype: torch.dtype
    config: DICConfig

    @property
    def card(self) -> Any: ...  # a pydantic ModelCard: ``model_dump(mode="json")``

    def enhance_tensor(self, lr: np.ndarray, *, return_steps: bool = False) -> list[Any]:
        """N x s x s x 3 uint8 RGB (s = ``config.lr_size``) -> N results with ``image`` (S x S x 3 uint8,
        S = ``config.hr_size``), ``landmarks`` (K x 2 float, output pixels, or None), ``confidence``
        (K floats in [0, 1] beside the landmarks) and ``steps`` (list of images, or None)."""
        ...


def engine_landmark_quality(engine: Engine) -> LandmarkQuality | None:
    """The card's verdict on the engine's landmarks (None for an engine without a facesr model card)."""
    return landmark_quality(engine.card) if isinstance(engine.card, ModelCard) else None


def describe_engine(engine: Engine) -> dict[str, Any]:
    """The model card as JSON plus what this worker runs it with (advertised in heartbeats)."""
    card = engine.card.model_dump(mode="json") if hasattr(engine.card, "model_dump") else dict(engine.card)
    quality = engine_landmark_quality(engine)
    return {
        **card,
        **({"landmark_quality": quality.as_dict()} if quality is not None else {}),
        "model_id": engine.model_id,
        "device": str(engine.device),
        "dtype": dtype_label(engine.dtype),
        # How it runs (eager, trace, compile); an engine that does not say is not advertised as one.
        **({"graph": graph} if isinstance(graph := getattr(engine, "graph", None), str) else {}),
    }


def dtype_label(dtype: torch.dtype) -> str:
    """ "fp32" / "bf16" / "fp16" as in the settings, else the torch name."""
    try:
        return dtype_name(dtype)
    except KeyError:
        return str(dtype).removeprefix("torch.")


def load_engines(
    checkpoints: Sequence[str | Path | None],
    *,
    device: str | None = None,
    dtype: str | None = None,
    graph: GraphMode | None = None,
    max_batch_size: int = 8,
) -> dict[str, Engine]:
    """Load each checkpoint (None = the bundled default) and key it by its card's name.

    ``graph`` and ``max_batch_size`` say how each is executed (see :mod:`facesr.model.runtime`).
    """
    engines: dict[str, Engine] = {}
    for path in checkpoints or [None]:
        engine = FaceSR.from_checkpoint(
            path, device=device, dtype=dtype, graph=graph, max_batch_size=max_batch_size
        )
        name = engine.card.name
        if name in engines:
            raise ValueError(f"two checkpoints advertise the model name {name!r}; names must be unique")
        engines[name] = engine
    return engines


def load_served_engines(settings: ServiceSettings) -> dict[str, Engine]:
    """The engines a worker serves: FACESR_CHECKPOINT (default: the bundled one) on FACESR_DEVICE/DTYPE.

    Raises:
        StartupError: a checkpoint is missing or corrupt, or two share a name; the message names
            FACESR_CHECKPOINT.
    """
    check_checkpoints(settings)
    try:
        return load_engines(
            settings.checkpoint_paths(),
            device=settings.torch_device,
            dtype=settings.dtype,
            graph=settings.graph_mode,
            max_batch_size=settings.batch_ceiling,
        )
    except (CheckpointError, ValueError, OSError) as error:
        raise StartupError(f"cannot load the model (FACESR_CHECKPOINT): {error}") from error

"""Refusing to start: the one error for a configuration the service cannot run with, and the checks
that need no model (so that the API process in Redis mode never imports torch for them)."""

from __future__ import annotations

from facesr.model.checkpoints import DEFAULT_CHECKPOINT
from facesr.service.settings import ServiceSettings


class StartupError(Exception):
    """The service cannot start with this configuration (the message says which setting to change)."""


def check_checkpoints(settings: ServiceSettings) -> None:
    """Refuse to start when no checkpoint is configured and the bundled default is not installed."""
    if not settings.checkpoint and not DEFAULT_CHECKPOINT.is_file():
        raise StartupError(
            f"no model to serve: the bundled default checkpoint {DEFAULT_CHECKPOINT.name} is not installed; "
            "set FACESR_CHECKPOINT to a .safetensors checkpoint (or pass --checkpoint)"
        )
    missing = [str(path) for path in settings.checkpoint if not path.is_file()]
    if missing:
        raise StartupError(f"FACESR_CHECKPOINT names missing file(s): {', '.join(missing)}")

"""Choosing and building the queue backend (and, in embedded mode, the models) from the settings."""

from __future__ import annotations

from typing import Any

from facesr.model.checkpoints import DEFAULT_CHECKPOINT
from facesr.model.errors import CheckpointError
from facesr.service.queue.base import QueueBackend
from facesr.service.settings import ServiceSettings


class StartupError(Exception):
    """The service cannot start with this configuration (the message says which setting to change)."""


def torch_device(settings: ServiceSettings) -> str | None:
    """FACESR_DEVICE as the model package expects it (None = CUDA when available, else CPU)."""
    return None if settings.device == "auto" else settings.device


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


def load_engines(settings: ServiceSettings) -> dict[str, Any]:
    """Load every configured checkpoint (default: the bundled one), keyed by model name.

    Raises:
        StartupError: a checkpoint is missing, corrupt, or two share a name; names FACESR_CHECKPOINT.
    """
    from facesr.service import worker  # imports torch: only processes that run a model pay for it

    check_checkpoints(settings)
    try:
        return worker.load_engines(
            list(settings.checkpoint) or [None], device=torch_device(settings), dtype=settings.dtype
        )
    except (CheckpointError, ValueError, OSError) as error:
        raise StartupError(f"cannot load the model (FACESR_CHECKPOINT): {error}") from error


def build_backend(settings: ServiceSettings) -> QueueBackend:
    """Redis queue when FACESR_REDIS_URL is set; otherwise the embedded queue plus an in-process worker."""
    if settings.embedded:
        from facesr.service.queue.memory_backend import InProcessQueue

        engines = load_engines(settings)
        if settings.default_model and settings.default_model not in engines:
            raise StartupError(
                f"FACESR_DEFAULT_MODEL={settings.default_model!r} is not among the loaded models "
                f"({', '.join(sorted(engines))}); name one of them or leave it empty"
            )
        return InProcessQueue(
            engines,
            max_queue=settings.max_queue,
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            batch_timeout_s=settings.batch_timeout_s,
        )
    from facesr.service.queue.redis_backend import RedisQueue

    return RedisQueue(
        settings.redis_url,
        prefix=settings.queue_prefix,
        max_queue=settings.max_queue,
        reply_ttl_s=settings.reply_ttl_s,
        job_ttl_s=settings.job_ttl_s,
    )

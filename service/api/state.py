"""What the routes share for the lifetime of the app: settings, the queue backend, a status cache."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field

from facesr.service.errors import ServiceNotReadyError, UnknownModelError
from facesr.service.queue.base import BackendStatus, BackendUnavailable, QueueBackend
from facesr.service.settings import ServiceSettings

# The request path needs the advertised models and readiness; asking the backend on every request
# would add a Redis round trip each time, so a snapshot this young is reused.
STATUS_MAX_AGE_S = 0.5
# Large uploads decoded at the same time by one API process: decoding is CPU-bound and memory-hungry, so
# they get half the cores and the other half stays free for small uploads, the event loop and, in the
# embedded mode, the model. Uploads up to SMALL_UPLOAD_PIXELS (a 512 x 512 face costs about a millisecond)
# skip the queue for these slots, so a flood of large images cannot hold up ordinary faces.
DECODE_CONCURRENCY = max(1, (os.cpu_count() or 2) // 2)
SMALL_UPLOAD_PIXELS = 512 * 512


class StatusCache:
    """The backend's `status()`, refreshed at most every `max_age_s` (concurrent callers share one call).

    A backend that raises instead of answering counts as unreachable, so callers only look at `reachable`.
    """

    def __init__(self, backend: QueueBackend, max_age_s: float = STATUS_MAX_AGE_S) -> None:
        self._backend = backend
        self._max_age_s = max_age_s
        self._status: BackendStatus | None = None
        self._taken_at = float("-inf")
        self._lock = asyncio.Lock()

    async def get(self, *, fresh: bool = False) -> BackendStatus:
        if not fresh and self._is_young():
            assert self._status is not None
            return self._status
        async with self._lock:
            status = self._status
            if fresh or status is None or not self._is_young():
                status = self._status = await self._safe_status()
                self._taken_at = time.monotonic()
            return status

    async def _safe_status(self) -> BackendStatus:
        try:
            return await self._backend.status()
        except (BackendUnavailable, OSError, TimeoutError) as error:
            return BackendStatus(reachable=False, ready_workers=0, detail=str(error) or type(error).__name__)

    def _is_young(self) -> bool:
        return self._status is not None and time.monotonic() - self._taken_at < self._max_age_s


@dataclass
class ServiceState:
    """Attached to `app.state.service` by `create_app`."""

    settings: ServiceSettings
    backend: QueueBackend
    status: StatusCache = field(init=False)
    decode_slots: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self.status = StatusCache(self.backend)
        self.decode_slots = asyncio.Semaphore(DECODE_CONCURRENCY)

    async def resolve_model(self, requested: str | None) -> str:
        """The model a request goes to: the one named, the configured default, or the only one served.

        Raises:
            ServiceNotReadyError: no worker serves any model right now (or the backend is unreachable).
            UnknownModelError: the name (or the configured default) is not served.
        """
        status = await self.status.get()
        if not status.reachable:
            raise ServiceNotReadyError(f"the job queue is unreachable: {status.detail}")
        if status.ready_workers < 1 or not status.models:
            raise ServiceNotReadyError("no worker with a warmed model is available yet")
        served = sorted(status.models)
        if requested:
            if requested not in status.models:
                raise UnknownModelError(
                    f"model {requested!r} is not served; available: {', '.join(served)}",
                    extra={"available": served},
                )
            return requested
        default = self.settings.default_model
        if default:
            if default not in status.models:
                # A deployment problem, not the client's: the configured default has no worker.
                raise ServiceNotReadyError(f"the default model {default!r} is not served by any ready worker")
            return default
        if len(served) == 1:
            return served[0]
        raise UnknownModelError(
            f"several models are served ({', '.join(served)}); name one with the `model` option",
            extra={"available": served},
        )

"""Checks that need only the request line and headers, done before any body byte is read.

FastAPI parses a route's body before it runs the route's dependencies, so an API-key dependency
would let an unauthenticated client make the server read and spool a whole upload first. This
middleware refuses such requests up front: a missing or wrong API key on `/v1/*` (401), and a
non-multipart body on the upload endpoints (415), and a `Content-Length` above the endpoint's
limit (413; bodies without a length are counted while they are read, see `create_app`). Admission is
decided here too, before an upload is read or decoded, as far as the queue's status snapshot allows:
no reachable queue or no ready worker (503), or every served model's queue full (429). The errors
are raised, not rendered here, so they go through the one error mapping like every other failure.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence

from pydantic import SecretStr
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from facesr.service.api.state import ServiceState
from facesr.service.errors import (
    PayloadTooLargeError,
    ServiceNotReadyError,
    UnauthorizedError,
    UnsupportedMediaTypeError,
)
from facesr.service.queue.base import BackendUnavailable, QueueFull

PROTECTED_PREFIX = "/v1/"
API_KEY_HEADER = "X-API-Key"
# Retry-After of a 429 decided before the body is read (the queue's own estimate needs the backend).
ADMISSION_RETRY_AFTER_S = 1.0


def key_is_valid(presented: str, keys: Sequence[SecretStr]) -> bool:
    """Constant-time membership: every configured key is compared, whichever matches."""
    candidate = presented.encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(candidate, key.get_secret_value().encode())
    return matched


def presented_key(headers: Headers) -> str | None:
    """The key from `X-API-Key: <key>` or `Authorization: Bearer <key>`, if any."""
    direct = headers.get(API_KEY_HEADER)
    if direct and direct.strip():
        return direct.strip()
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return None


class HeaderGuardMiddleware:
    """Refuse unauthenticated `/v1/*` requests and non-multipart uploads before reading the body.

    Args:
        app: the wrapped ASGI app.
        api_keys: accepted keys; empty turns authentication off.
        body_limits: POST paths whose body must be `multipart/form-data`, with their size limits.
    """

    def __init__(
        self, app: ASGIApp, *, api_keys: Sequence[SecretStr], body_limits: Mapping[str, int]
    ) -> None:
        self.app = app
        self.api_keys = list(api_keys)
        self.body_limits = dict(body_limits)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self._check(scope)
            if scope["method"] == "POST" and scope["path"] in self.body_limits:
                await self._admit(scope)
        await self.app(scope, receive, send)

    @staticmethod
    async def _admit(scope: Scope) -> None:
        """Refuse an upload that could not be queued anyway, before its body is read.

        Uses the status snapshot the routes use (at most `STATUS_MAX_AGE_S` old). A model's queue
        holds at most `max_queue` jobs, so when the jobs waiting over all served models reach
        `max_queue` times their number, every queue is full; otherwise the route's own admission
        decides, atomically, for the model asked for.
        """
        service: ServiceState | None = getattr(scope["app"].state, "service", None)
        if service is None:  # the app runs without its start-up (uvicorn serves nothing before it)
            return
        status = await service.status.get()
        if not status.reachable:
            raise BackendUnavailable("the job queue is unreachable")
        if status.ready_workers < 1 or not status.models:
            raise ServiceNotReadyError("no worker with a warmed model is available yet")
        limit = service.settings.max_queue * len(status.models)
        if status.depth >= limit:
            raise QueueFull(status.depth, limit, ADMISSION_RETRY_AFTER_S)

    def _check(self, scope: Scope) -> None:
        path: str = scope["path"]
        headers = Headers(scope=scope)
        if self.api_keys and path.startswith(PROTECTED_PREFIX):
            key = presented_key(headers)
            if key is None:
                raise UnauthorizedError(
                    f"this service needs an API key: send `Authorization: Bearer <key>` or `{API_KEY_HEADER}`"
                )
            if not key_is_valid(key, self.api_keys):
                raise UnauthorizedError("the API key is not valid")
        if scope["method"] == "POST" and path in self.body_limits:
            self._check_upload(headers, self.body_limits[path])

    @staticmethod
    def _check_upload(headers: Headers, limit: int) -> None:
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLargeError(
                f"the request body has {declared} bytes; this endpoint accepts {limit}"
            )
        media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media_type != "multipart/form-data":
            raise UnsupportedMediaTypeError(
                "the body must be multipart/form-data with the image in a file part, "
                f"got {media_type or 'none'!r}"
            )

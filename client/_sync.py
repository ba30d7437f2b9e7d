"""`Client`: the blocking facesr client (httpx.Client); the protocol itself is in `_protocol`."""

from __future__ import annotations

import time
from collections.abc import Iterable
from types import TracebackType
from typing import TypeVar

import httpx

from facesr.client._images import ImageInput
from facesr.client._plan import Plan, Reply, Send, Wait
from facesr.client._protocol import build_protocol
from facesr.client._timeouts import DEFAULT_TIMEOUT_S
from facesr.client.results import BatchResult, Health, ModelInfo, Readiness, SuperResolution

T = TypeVar("T")


class Client:
    """Blocking client of a facesr service.

    Use it as a context manager (or call `close`); it keeps one connection pool, and is safe to share
    between threads.

    Args:
        base_url: where the service listens, e.g. ``"http://127.0.0.1:8000"`` (a path prefix is kept).
        api_key: sent as ``Authorization: Bearer <key>`` on ``/v1/*`` when the service has keys.
        timeout: client-side limit of each phase (connect, write, read) of one HTTP attempt in seconds
            (or an `httpx.Timeout`; None: none). A call with a ``deadline_ms`` waits for an answer for
            what is left of its deadline plus 2 s instead, longer or shorter than `timeout`, and its
            connect, write and pool limits are at most what is left of the deadline.
        max_retries: retries of one call after its first attempt, for 429 (queue full) and 503
            (unavailable) answers and for connection failures. Other errors are never retried.
        max_retry_wait: cap on the seconds one call spends waiting between attempts. A 429/503 is
            retried after its ``Retry-After`` (seconds or an HTTP date) only when that fits in what is
            left of this cap and of the call's deadline; otherwise its error is raised at once.
        transport: an httpx transport to send through (proxies, custom TLS, tests); default httpx's.

    Raises (from every method): a `ProblemError` subclass for an error answer, `FaceSRConnectionError`
    (`FaceSRTimeoutError`) when no answer came, `UnexpectedResponseError` for an unreadable one.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT_S,
        max_retries: int = 3,
        max_retry_wait: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._protocol = build_protocol(
            api_key=api_key, timeout=timeout, max_retries=max_retries, max_retry_wait=max_retry_wait
        )
        self._http = httpx.Client(base_url=base_url, timeout=self._protocol.timeout, transport=transport)

    # -- the driver ----------------------------------------------------------------------------------------
    def _send(self, step: Send) -> Reply:
        try:
            return self._http.request(
                step.method,
                step.path,
                params=step.params,
                headers=step.headers,
                files=step.files,
                timeout=step.timeout,
            )
        except httpx.TransportError as error:
            return error

    def _run(self, plan: Plan[T]) -> T:
        reply: Reply = None
        try:
            while True:
                try:
                    step = plan.send(reply)
                except StopIteration as done:
                    return done.value
                if isinstance(step, Wait):
                    time.sleep(step.seconds)
                    reply = None
                else:
                    reply = self._send(step)
        finally:
            plan.close()

    # -- lifecycle -------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- operations ------------------------------------------------------------------------------------------
    def super_resolve(
        self,
        image: ImageInput,
        *,
        landmarks: bool = True,
        steps: bool = False,
        compare: bool = False,
        fit: str | None = None,
        model: str | None = None,
        deadline_ms: int | None = None,
        output_format: str | None = None,
        quality: int | None = None,
    ) -> SuperResolution:
        """Super-resolve one face: any size in, a 128 x 128 face and 68 landmarks out.

        Args:
            image: a file path, the encoded bytes of a PNG/JPEG/WebP/BMP file, a PIL image, or a uint8
                numpy array (H x W, H x W x 3 RGB or H x W x 4 RGBA). It should be a face crop like the
                training data (a square box about 1.25 x the landmark extent); there is no face detection.
            landmarks: return the landmarks (68 x 2, output pixels) and their confidences.
            steps: also return every feedback step's 128 x 128 image.
            compare: also return the 16 x 16 model input (`lr_image`) and its bicubic enlargement to
                128 x 128 (`bicubic_image`), the baseline.
            fit: how a non-square image is made square: ``"crop"`` (the centred square, the service's
                default) or ``"pad"`` (edge pixels repeated); None: the service's default.
            model: the model name (see `models`); None: the service's default model.
            deadline_ms: time budget of the whole call in milliseconds (a positive integer), queueing and
                retries included; sent as ``X-Deadline-Ms`` (what is left of it, on a retry). It also
                bounds the client's own wait: a service that does not answer raises
                `FaceSRTimeoutError` about 2 s after the deadline, whatever `timeout` is.
            output_format: ``"png"`` (default), ``"jpeg"`` or ``"webp"``: how `image` travels.
            quality: JPEG/WebP quality 1-100 (service default 95).

        Returns:
            The `SuperResolution`.

        Raises:
            BadImageError: undecodable (400), too large (413), unsupported type (415), too small (422).
            InvalidOptionsError: an option out of its domain (422); `UnknownModelError` for a model name.
            UnauthorizedError: a missing or wrong API key (401).
            QueueFullError, ServiceUnavailableError: 429/503 still, after the retries allowed.
            DeadlineExceededError: the deadline passed in the service (504).
            ValueError: `deadline_ms` is not a positive integer.
        """
        params = self._protocol.options(
            landmarks=landmarks,
            steps=steps,
            compare=compare,
            fit=fit,
            model=model,
            output_format=output_format,
            quality=quality,
        )
        return self._run(self._protocol.super_resolve(image, deadline_ms=deadline_ms, params=params))

    def super_resolve_batch(
        self,
        images: Iterable[ImageInput],
        *,
        landmarks: bool = True,
        steps: bool = False,
        compare: bool = False,
        fit: str | None = None,
        model: str | None = None,
        deadline_ms: int | None = None,
        output_format: str | None = None,
        quality: int | None = None,
    ) -> BatchResult:
        """Super-resolve several faces in one request (at most the service's ``FACESR_MAX_BATCH_IMAGES``).

        Options as for `super_resolve`, applied to every image. A problem of one image (undecodable,
        too large, too small, ...) is that item's typed `error`; problems of the whole request (API key,
        too many images, options, service unavailable) raise as in `super_resolve`.

        Returns:
            A `BatchResult`: one `BatchItem` per image in request order, each with `result` or `error`.
        """
        params = self._protocol.options(
            landmarks=landmarks,
            steps=steps,
            compare=compare,
            fit=fit,
            model=model,
            output_format=output_format,
            quality=quality,
        )
        return self._run(self._protocol.super_resolve_batch(images, deadline_ms=deadline_ms, params=params))

    def models(self) -> tuple[ModelInfo, ...]:
        """The models served now, each with its card (``GET /v1/models``)."""
        return self._run(self._protocol.models())

    def health(self) -> Health:
        """Liveness (``GET /healthz``): raises `FaceSRConnectionError` when the process does not answer."""
        return self._run(self._protocol.health())

    def ready(self) -> Readiness:
        """Readiness (``GET /readyz``): ``ready`` is False, not an error, while no model is warmed up."""
        return self._run(self._protocol.ready())

    def wait_ready(self, timeout_s: float = 60.0, *, interval_s: float = 0.25) -> Readiness:
        """Poll `ready` until the service can serve, for at most `timeout_s` seconds (each attempt waits
        for its answer at most the time left, however long the client timeout).

        Raises:
            ServiceUnavailableError: it answered but was not ready in time.
            FaceSRConnectionError: it never answered in time.
        """
        return self._run(self._protocol.wait_ready(timeout_s, interval_s))

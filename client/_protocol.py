"""The facesr HTTP protocol, without I/O: requests, retries, and reading answers.

Every client operation is a *plan*: a generator that yields the steps it needs, `Send` (make this HTTP
request; the driver sends back the `httpx.Response`, or the `httpx.TransportError` it raised) and `Wait`
(sleep this long; the driver sends back None), and finally returns the typed result or raises a typed
error. `facesr.client.Client` drives plans with `httpx.Client` and `time.sleep`, `AsyncClient` with
`httpx.AsyncClient` and `asyncio.sleep`; everything else (options, headers, deadlines, retries, parsing)
is here, once.
"""

from __future__ import annotations

import base64
import email.utils
import io
import math
import random
import time
from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timezone
from typing import Any, TypeVar

import httpx
import numpy as np
from PIL import Image

from facesr.client._images import ImageInput, Upload, to_upload
from facesr.client.errors import (
    FaceSRConnectionError,
    FaceSRTimeoutError,
    ProblemError,
    ServiceUnavailableError,
    UnexpectedResponseError,
    problem_error,
)
from facesr.client.results import (
    BatchItem,
    BatchResult,
    Health,
    InputRecord,
    InputWarning,
    LandmarkQuality,
    ModelInfo,
    Readiness,
    SuperResolution,
)

T = TypeVar("T")

SINGLE_PATH = "/v1/super-resolve"
BATCH_PATH = "/v1/super-resolve/batch"
MODELS_PATH = "/v1/models"
HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"

DEADLINE_HEADER = "X-Deadline-Ms"
API_KEY_HEADER = "Authorization"
PROBLEM_MEDIA_TYPE = "application/problem+json"
USER_AGENT = "facesr-client"

#: Default total time limit of one HTTP attempt (seconds) when the caller gives none.
DEFAULT_TIMEOUT_S = 30.0
#: Added to a deadline for the client-side read timeout: the service answers 504 at the deadline, and
#: the answer needs time to arrive.
DEADLINE_SLACK_S = 2.0
#: Status codes retried (with their Retry-After): queue full, unavailable.
RETRY_STATUSES = frozenset({429, 503})
#: Transport errors retried: the connection failed or broke before an answer came. (Inference has no side
#: effects, so a request the service may have received can be sent again.) Timeouts are not retried.
RETRY_TRANSPORT_ERRORS: tuple[type[httpx.TransportError], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
)


# -- steps ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Send:
    """Make one HTTP request (the driver answers with the response or the transport error)."""

    method: str
    path: str
    headers: Mapping[str, str]
    timeout: httpx.Timeout
    params: Mapping[str, str] | None = None
    files: Sequence[tuple[str, tuple[str, bytes, str]]] | None = None


@dataclass(frozen=True)
class Wait:
    """Sleep `seconds` before the next step (the driver answers with None)."""

    seconds: float


Step = Send | Wait
Reply = httpx.Response | httpx.TransportError | None
Plan = Generator[Step, Reply, T]


@dataclass(frozen=True)
class RetryPolicy:
    """When to send a request again.

    Attributes:
        max_retries: retries after the first attempt (429/503 answers and connection errors together).
        max_wait_s: cap on the total time spent waiting between attempts of one call; a Retry-After that
            would exceed it ends the call with the error instead.
        backoff_s: first wait when the answer gives no Retry-After (or the connection failed); doubles per
            retry, with jitter, up to `max_backoff_s`.
    """

    max_retries: int = 3
    max_wait_s: float = 30.0
    backoff_s: float = 0.2
    max_backoff_s: float = 5.0

    def backoff(self, retry: int) -> float:
        """Wait before retry number `retry` (0-based) without a Retry-After: exponential, jittered."""
        ceiling = min(self.max_backoff_s, self.backoff_s * 2**retry)
        return ceiling * (0.5 + random.random() / 2)  # noqa: S311 - jitter, not cryptography


# -- reading answers -------------------------------------------------------------------------------------
def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After value: delay-seconds (``"2"``) or an HTTP date.

    Returns None for a missing or unreadable value; a date in the past gives 0.
    """
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(text)
    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    current = time.time() if now is None else now
    return max(0.0, moment.timestamp() - current)


def _request_id(response: httpx.Response) -> str | None:
    return response.headers.get("x-request-id")


def error_from_response(response: httpx.Response) -> ProblemError:
    """The typed error of an error answer, from its problem document or, without one, from its status."""
    document: Mapping[str, Any] | None = None
    media_type = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type in (PROBLEM_MEDIA_TYPE, "application/json"):
        try:
            parsed = response.json()
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            document = parsed
    fallback_detail = ""
    if document is None:
        fallback_detail = " ".join(response.text.split())[:300]
    return problem_error(
        response.status_code,
        document,
        request_id=_request_id(response),
        retry_after=parse_retry_after(response.headers.get("retry-after")),
        fallback_title=response.reason_phrase,
        fallback_detail=fallback_detail,
    )


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError as error:
        raise UnexpectedResponseError(
            f"{response.request.url.path}: expected JSON, got {response.headers.get('content-type')!r}",
            status=response.status_code,
            request_id=_request_id(response),
        ) from error
    if not isinstance(body, dict):
        raise UnexpectedResponseError(
            f"{response.request.url.path}: expected a JSON object",
            status=response.status_code,
            request_id=_request_id(response),
        )
    return body


def _image(data: str) -> Image.Image:
    """A base64 image of a JSON answer, decoded and loaded."""
    image = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
    image.load()
    return image


def _optional_image(data: object) -> Image.Image | None:
    return _image(data) if isinstance(data, str) else None


def _read_only(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


def _landmarks(points: object) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(N x 2 points, N confidences) from ``[{x, y, confidence}, ...]`` (or the older ``[[x, y], ...]``)."""
    if points is None:
        return None, None
    if not isinstance(points, list):
        raise TypeError("landmarks must be a list")
    if all(isinstance(point, dict) for point in points):
        xy = np.array([[float(p["x"]), float(p["y"])] for p in points], dtype=np.float64).reshape(-1, 2)
        confidence = np.array([float(p.get("confidence", np.nan)) for p in points], dtype=np.float64)
        return _read_only(xy), _read_only(confidence)
    xy = np.array(points, dtype=np.float64).reshape(-1, 2)
    return _read_only(xy), None


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


_INPUT_FIELDS = frozenset(
    {"format", "width", "height", "oriented", "fit", "x", "y", "side", "resized", "resized_to", "warnings"}
)


def parse_input(record: object, headers: Mapping[str, str] | None = None) -> InputRecord:
    """The `InputRecord` from the JSON ``input`` object and, for single-image answers, the
    ``X-Input-Transform`` / ``X-Input-Warnings`` headers (which fill in warnings the body lacks)."""
    data: Mapping[str, Any] = record if isinstance(record, dict) else {}
    warnings = tuple(
        InputWarning(code=str(item.get("code", "")), message=str(item.get("message", "")))
        for item in data.get("warnings") or ()
        if isinstance(item, dict)
    )
    header_warnings = (headers or {}).get("x-input-warnings")
    if not warnings and header_warnings:
        codes = [code.strip() for code in header_warnings.split(",") if code.strip()]
        warnings = tuple(InputWarning(code=code, message="") for code in codes)
    fmt, oriented, fit, resized = (data.get(key) for key in ("format", "oriented", "fit", "resized"))
    return InputRecord(
        format=fmt if isinstance(fmt, str) else None,
        width=_int_or_none(data.get("width")),
        height=_int_or_none(data.get("height")),
        oriented=oriented if isinstance(oriented, bool) else None,
        fit=fit if isinstance(fit, str) else None,
        x=_int_or_none(data.get("x")),
        y=_int_or_none(data.get("y")),
        side=_int_or_none(data.get("side")),
        resized=resized if isinstance(resized, bool) else None,
        resized_to=_int_or_none(data.get("resized_to")),
        warnings=warnings,
        transform=(headers or {}).get("x-input-transform"),
        extra={key: value for key, value in data.items() if key not in _INPUT_FIELDS},
    )


def parse_super_resolved(
    body: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> SuperResolution:
    """A `SuperResolution` from the JSON body of POST /v1/super-resolve (or one batch item's `result`).

    Raises:
        KeyError, TypeError, ValueError, OSError: the body is not a `SuperResolved` document (callers turn
            these into `UnexpectedResponseError`).
    """
    landmarks, confidences = _landmarks(body.get("landmarks"))
    quality = body.get("landmark_quality")
    steps = body.get("steps")
    resized_from = body.get("resized_from")
    batch_size = body.get("batch_size")
    return SuperResolution(
        image=_image(body["image"]),
        landmarks=landmarks,
        confidences=confidences,
        landmark_quality=(
            LandmarkQuality(status=str(quality["status"]), message=str(quality.get("message", "")))
            if isinstance(quality, dict)
            else None
        ),
        model=str(body["model"]),
        model_id=str(body.get("model_id") or body["model"]),
        request_id=str(body["request_id"]),
        media_type=str(body.get("media_type", "")),
        timings_ms={str(phase): float(ms) for phase, ms in (body.get("timings_ms") or {}).items()},
        batch_size=int(batch_size) if batch_size is not None else None,
        steps=tuple(_image(step) for step in steps) if isinstance(steps, list) else None,
        lr_image=_optional_image(body.get("lr_image")),
        bicubic_image=_optional_image(body.get("bicubic_image")),
        input=parse_input(body.get("input"), headers),
        resized_from=(
            (int(resized_from[0]), int(resized_from[1]))
            if isinstance(resized_from, list) and len(resized_from) == 2
            else None
        ),
    )


# What a body that is not the documented document raises while it is read (binascii.Error is a ValueError,
# PIL's UnidentifiedImageError an OSError).
_MALFORMED = (KeyError, TypeError, ValueError, IndexError, OSError)


def _face(
    body: Mapping[str, Any], response: httpx.Response, headers: Mapping[str, str] | None
) -> SuperResolution:
    try:
        return parse_super_resolved(body, headers)
    except _MALFORMED as error:
        raise UnexpectedResponseError(
            f"the answer is not a super-resolved face: {type(error).__name__}: {error}",
            status=response.status_code,
            request_id=_request_id(response),
        ) from error


def parse_batch(response: httpx.Response) -> BatchResult:
    """A `BatchResult` from the JSON body of POST /v1/super-resolve/batch."""
    body = _json_object(response)
    items: list[BatchItem] = []
    for position, entry in enumerate(body.get("items") or ()):
        if not isinstance(entry, dict):
            raise UnexpectedResponseError(
                "a batch item is not an object", status=response.status_code, request_id=_request_id(response)
            )
        index = _int_or_none(entry.get("index"))
        index = position if index is None else index
        filename = entry.get("filename") if isinstance(entry.get("filename"), str) else None
        result = entry.get("result")
        if entry.get("ok") and isinstance(result, dict):
            items.append(BatchItem(index=index, filename=filename, result=_face(result, response, None)))
            continue
        found = entry.get("error")
        problem: Mapping[str, Any] = found if isinstance(found, dict) else {}
        status = _int_or_none(problem.get("status")) or 500
        batch_id = body.get("request_id")
        error = problem_error(
            status,
            problem,
            request_id=f"{batch_id}.{index}" if isinstance(batch_id, str) else None,
            fallback_title="batch item failed",
        )
        items.append(BatchItem(index=index, filename=filename, error=error))
    return BatchResult(request_id=str(body.get("request_id", "")), items=tuple(items))


def parse_models(response: httpx.Response) -> tuple[ModelInfo, ...]:
    body = _json_object(response)
    models = []
    for entry in body.get("models") or ():
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            model_id = entry.get("model_id")
            card = entry.get("card")
            models.append(
                ModelInfo(
                    name=entry["name"],
                    model_id=model_id if isinstance(model_id, str) else None,
                    default=bool(entry.get("default", False)),
                    card=card if isinstance(card, dict) else {},
                )
            )
    return tuple(models)


def parse_readiness(body: Mapping[str, Any]) -> Readiness:
    models = body.get("models")
    return Readiness(
        ready=bool(body.get("ready", False)),
        detail=str(body.get("detail", "")),
        mode=body.get("mode") if isinstance(body.get("mode"), str) else None,
        ready_workers=_int_or_none(body.get("ready_workers")) or 0,
        models=tuple(str(name) for name in models) if isinstance(models, list) else (),
        queue_depth=_int_or_none(body.get("queue_depth")) or 0,
    )


def _transport_error(error: httpx.TransportError, what: str) -> FaceSRConnectionError:
    if isinstance(error, httpx.TimeoutException) and not isinstance(error, httpx.ConnectTimeout):
        return FaceSRTimeoutError(f"{what}: no answer within the client timeout ({type(error).__name__})")
    return FaceSRConnectionError(f"{what}: {type(error).__name__}: {error or 'connection failed'}")


# -- the protocol ----------------------------------------------------------------------------------------
def _bool(value: bool) -> str:
    return "true" if value else "false"


def _check_deadline(deadline_ms: int | None) -> None:
    if deadline_ms is None:
        return
    if isinstance(deadline_ms, bool) or not isinstance(deadline_ms, int) or deadline_ms < 1:
        raise ValueError(f"deadline_ms must be a positive integer (milliseconds), got {deadline_ms!r}")


def as_timeout(timeout: float | httpx.Timeout | None) -> httpx.Timeout:
    """An `httpx.Timeout` from seconds (every phase), an `httpx.Timeout`, or None (no limit)."""
    if isinstance(timeout, httpx.Timeout):
        return timeout
    return httpx.Timeout(timeout)


class Protocol:
    """Builds the plans of every client operation; shared by `Client` and `AsyncClient`.

    Args:
        api_key: sent as ``Authorization: Bearer <key>`` to ``/v1/*`` (None: no key).
        timeout: client-side limit of one HTTP attempt; the read limit is raised to the request's
            deadline plus `DEADLINE_SLACK_S` when that is longer.
        retry: the `RetryPolicy`.
    """

    def __init__(self, *, api_key: str | None, timeout: httpx.Timeout, retry: RetryPolicy) -> None:
        if retry.max_retries < 0 or retry.max_wait_s < 0:
            raise ValueError("max_retries and max_retry_wait must be >= 0")
        self.timeout = timeout
        self.retry = retry
        self.headers = {"User-Agent": USER_AGENT}
        self._auth = {API_KEY_HEADER: f"Bearer {api_key}"} if api_key else {}

    # -- the shared exchange: deadline, timeouts and retries ---------------------------------------------
    def _timeout_for(self, remaining_s: float | None) -> httpx.Timeout:
        base = self.timeout
        if remaining_s is None or base.read is None:
            return base
        read = max(base.read, remaining_s + DEADLINE_SLACK_S)
        return httpx.Timeout(connect=base.connect, read=read, write=base.write, pool=base.pool)

    def exchange(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        files: Sequence[tuple[str, tuple[str, bytes, str]]] | None = None,
        headers: Mapping[str, str] | None = None,
        deadline_ms: int | None = None,
        retry: bool = True,
    ) -> Plan[httpx.Response]:
        """Send a request until it gets a success answer; returns that response.

        Retries (when `retry`) 429 and 503 answers after their Retry-After (or a backoff without one) and
        connection failures after a backoff, at most `max_retries` times, waiting at most `max_wait_s` in
        all, and never past the deadline: the whole call, retries included, has `deadline_ms`, and each
        attempt sends what is left of it in ``X-Deadline-Ms``. Raises the typed error of the last answer.
        """
        _check_deadline(deadline_ms)
        started = time.monotonic()
        deadline_at = None if deadline_ms is None else started + deadline_ms / 1000.0
        waited = 0.0
        retries = 0
        what = f"{method} {path}"
        while True:
            attempt_headers = {**self.headers, **(headers or {})}
            if path.startswith("/v1/"):
                attempt_headers.update(self._auth)
            remaining_s = None
            if deadline_ms is not None and deadline_at is not None:
                remaining_s = deadline_at - time.monotonic()
                # The first attempt carries the budget as given, a retry what is left of it.
                left_ms = deadline_ms if retries == 0 else max(1, math.floor(remaining_s * 1000))
                attempt_headers[DEADLINE_HEADER] = str(left_ms)
            reply = yield Send(
                method=method,
                path=path,
                headers=attempt_headers,
                timeout=self._timeout_for(remaining_s),
                params=params,
                files=files,
            )
            error: FaceSRConnectionError | ProblemError
            if isinstance(reply, httpx.Response):
                if reply.is_success:
                    return reply
                error = error_from_response(reply)
                retryable = reply.status_code in RETRY_STATUSES
                delay = error.retry_after
            elif isinstance(reply, httpx.TransportError):
                error = _transport_error(reply, what)
                error.__cause__ = reply
                retryable = isinstance(reply, RETRY_TRANSPORT_ERRORS)
                delay = None
            else:  # pragma: no cover - a driver bug
                raise TypeError(f"a driver answered a Send with {reply!r}")
            if not retry or not retryable or retries >= self.retry.max_retries:
                raise error
            if delay is None:
                delay = self.retry.backoff(retries)
            if waited + delay > self.retry.max_wait_s:
                raise error
            if deadline_at is not None and time.monotonic() + delay >= deadline_at:
                raise error
            yield Wait(delay)
            waited += delay
            retries += 1

    # -- operations --------------------------------------------------------------------------------------
    @staticmethod
    def options(
        *,
        landmarks: bool,
        steps: bool,
        compare: bool,
        fit: str | None,
        model: str | None,
        output_format: str | None,
        quality: int | None,
    ) -> dict[str, str]:
        """Query parameters; options at their server default are left out, so that a server which does
        not know an option yet (it refuses unknown ones) still serves requests that do not use it."""
        params: dict[str, str] = {}
        if not landmarks:
            params["landmarks"] = "false"
        if steps:
            params["steps"] = "true"
        if compare:
            params["compare"] = "true"
        if fit is not None:
            params["fit"] = fit
        if model is not None:
            params["model"] = model
        if output_format is not None:
            params["format"] = output_format
        if quality is not None:
            params["quality"] = str(quality)
        return params

    def super_resolve(
        self, image: ImageInput, *, deadline_ms: int | None, params: Mapping[str, str]
    ) -> Plan[SuperResolution]:
        upload = to_upload(image)
        response = yield from self.exchange(
            "POST",
            SINGLE_PATH,
            params=params,
            files=[("image", upload.part())],
            headers={"Accept": "application/json"},
            deadline_ms=deadline_ms,
        )
        return _face(_json_object(response), response, response.headers)

    def super_resolve_batch(
        self, images: Iterable[ImageInput], *, deadline_ms: int | None, params: Mapping[str, str]
    ) -> Plan[BatchResult]:
        uploads: list[Upload] = [to_upload(image, name=f"image-{i}") for i, image in enumerate(images)]
        if not uploads:
            raise ValueError("a batch needs at least one image")
        response = yield from self.exchange(
            "POST",
            BATCH_PATH,
            params=params,
            files=[("images", upload.part()) for upload in uploads],
            headers={"Accept": "application/json"},
            deadline_ms=deadline_ms,
        )
        return parse_batch(response)

    def models(self) -> Plan[tuple[ModelInfo, ...]]:
        response = yield from self.exchange("GET", MODELS_PATH, headers={"Accept": "application/json"})
        return parse_models(response)

    def health(self) -> Plan[Health]:
        response = yield from self.exchange("GET", HEALTH_PATH, retry=False)
        return Health(status=str(_json_object(response).get("status", "")))

    def ready(self) -> Plan[Readiness]:
        """Readiness; a 503 "not ready" answer is a `Readiness` with ``ready=False``, not an error."""
        try:
            response = yield from self.exchange("GET", READY_PATH, retry=False)
        except ServiceUnavailableError as error:
            return Readiness(ready=False, detail=error.detail or error.title)
        return parse_readiness(_json_object(response))

    def wait_ready(self, timeout_s: float, interval_s: float) -> Plan[Readiness]:
        """Poll readiness until ready, tolerating refused connections while the server starts.

        Raises `ServiceUnavailableError` (not ready in time) or `FaceSRConnectionError` (never answered).
        """
        give_up_at = time.monotonic() + timeout_s
        while True:
            last: FaceSRConnectionError | ServiceUnavailableError
            try:
                readiness = yield from self.ready()
            except FaceSRConnectionError as error:
                last = error
            else:
                if readiness.ready:
                    return readiness
                last = ServiceUnavailableError(
                    status=503,
                    title="Service not ready",
                    detail=f"not ready after {timeout_s:g} s: {readiness.detail}",
                )
            if time.monotonic() + interval_s > give_up_at:
                raise last
            yield Wait(interval_s)


def build_protocol(
    *,
    api_key: str | None,
    timeout: float | httpx.Timeout | None,
    max_retries: int,
    max_retry_wait: float,
) -> Protocol:
    """The `Protocol` for a client's constructor arguments (see `facesr.client.Client`)."""
    return Protocol(
        api_key=api_key,
        timeout=as_timeout(timeout),
        retry=RetryPolicy(max_retries=max_retries, max_wait_s=max_retry_wait),
    )

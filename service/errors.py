"""Domain errors of the service and the ONE mapping from any exception to an RFC 9457 problem.

Code anywhere in the service raises a `ServiceError` subclass (or lets a queue error through);
`problem_for` is the only place that decides the HTTP status, the problem type and the headers,
and `problem_response` the only place that renders `application/problem+json`. The API installs
`handle_exception` for every exception class (see `install_error_handlers`), and the batch endpoint
uses `problem_for` for its per-item errors, so a given failure looks the same wherever it surfaces.

Nothing a client sends may become a 500: bad input raises a 4xx `ServiceError` before the queue is
touched; only genuine bugs reach the catch-all branch, which is logged with the request id.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from facesr.service.queue.base import BackendUnavailable, QueueFull
from facesr.service.queue.jobs import JobResult

logger = logging.getLogger("facesr.service")

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:facesr:problem:"
# Seconds a client should wait before retrying when the service is (re)starting or Redis is away.
UNAVAILABLE_RETRY_AFTER_S = 1.0

Outcome = Literal["rejected", "failed"]


class ServiceError(Exception):
    """Base class of errors with a defined HTTP meaning.

    Class attributes give the status, the problem type (`slug`) and title; `outcome` and `reason`
    say how the error is counted (`facesr_rejected_total` or `facesr_request_failures_total`).
    """

    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal-error"
    title: ClassVar[str] = "Internal error"
    outcome: ClassVar[Outcome] = "failed"
    reason: ClassVar[str] = "internal"

    def __init__(
        self,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})


class UndecodableImageError(ServiceError):
    """The upload is empty, truncated or not an image at all."""

    status, slug, title = 400, "undecodable-image", "The upload is not a decodable image"
    outcome, reason = "rejected", "bad_image"


class UnauthorizedError(ServiceError):
    """API keys are configured and the request carries none or a wrong one."""

    status, slug, title = 401, "unauthorized", "Missing or invalid API key"
    outcome, reason = "rejected", "unauthorized"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="facesr"'})


class NotAcceptableError(ServiceError):
    """The Accept header asks for a representation this endpoint cannot produce."""

    status, slug, title = 406, "not-acceptable", "No acceptable representation"
    outcome, reason = "rejected", "not_acceptable"


class PayloadTooLargeError(ServiceError):
    """Too many bytes (one file or the whole body), or too many images in one batch."""

    status, slug, title = 413, "payload-too-large", "Upload too large"
    outcome, reason = "rejected", "too_large"


class ImageTooLargeError(ServiceError):
    """The image header announces more pixels than allowed (decompression-bomb guard)."""

    status, slug, title = 413, "image-too-large", "Image dimensions too large"
    outcome, reason = "rejected", "too_many_pixels"


class UnsupportedMediaTypeError(ServiceError):
    """The request or the uploaded part is not one of the accepted image types."""

    status, slug, title = 415, "unsupported-media-type", "Unsupported media type"
    outcome, reason = "rejected", "unsupported_type"


class InvalidOptionsError(ServiceError):
    """A request option or header has a value outside its domain."""

    status, slug, title = 422, "invalid-options", "Invalid request options"
    outcome, reason = "rejected", "bad_options"


class FaceTooSmallError(ServiceError):
    """The image (or the square the input policy takes from it) is below the policy's minimum side."""

    status, slug, title = 422, "input-too-small", "Image too small for a face"
    outcome, reason = "rejected", "too_small"


class UnknownModelError(InvalidOptionsError):
    """The request names a model that no worker serves."""

    slug, title = "unknown-model", "Unknown model"
    reason = "unknown_model"


class ServiceNotReadyError(ServiceError):
    """No worker with a warmed model is available (yet)."""

    status, slug, title = 503, "not-ready", "Service not ready"
    outcome, reason = "rejected", "not_ready"

    def __init__(self, detail: str, *, retry_after_s: float = UNAVAILABLE_RETRY_AFTER_S) -> None:
        super().__init__(detail, headers={"Retry-After": _retry_after(retry_after_s)})


class ModelOutOfMemoryError(ServiceError):
    """The accelerator ran out of memory even for this job alone; retrying later may succeed."""

    status, slug, title = 503, "out-of-memory", "Model server out of memory"
    outcome, reason = "failed", "oom"

    def __init__(self, detail: str, *, retry_after_s: float = UNAVAILABLE_RETRY_AFTER_S) -> None:
        super().__init__(detail, headers={"Retry-After": _retry_after(retry_after_s)})


class DeadlineExceededError(ServiceError):
    """The request's time budget (queue wait included) ran out."""

    status, slug, title = 504, "deadline-exceeded", "Deadline exceeded"
    outcome, reason = "failed", "deadline"


class ClientClosedRequestError(ServiceError):
    """The client disconnected before the answer was ready (nginx's 499; nobody reads the body)."""

    status, slug, title = 499, "client-closed-request", "Client closed the request"
    outcome, reason = "failed", "cancelled"


class InferenceFailedError(ServiceError):
    """The worker could not process the job (a server-side fault, not the client's)."""

    status, slug, title = 500, "inference-failed", "Inference failed"
    outcome, reason = "failed", "internal"


@dataclass(frozen=True)
class Problem:
    """An RFC 9457 problem document plus the response headers and how it is counted."""

    status: int
    slug: str
    title: str
    detail: str
    outcome: Outcome | None
    reason: str
    headers: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    unexpected: bool = False  # True only for exceptions the mapping does not know: bugs

    @property
    def type(self) -> str:
        return PROBLEM_TYPE_PREFIX + self.slug

    def body(self, *, instance: str | None = None, request_id: str | None = None) -> dict[str, Any]:
        """The JSON document: the RFC's members, then `request_id` and any extension members."""
        document: dict[str, Any] = {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance is not None:
            document["instance"] = instance
        if request_id is not None:
            document["request_id"] = request_id
        document.update(self.extra)
        return document


def _retry_after(seconds: float) -> str:
    """Retry-After takes whole seconds; round up so clients never come back too early."""
    return str(max(1, math.ceil(seconds)))


def _from_service_error(error: ServiceError) -> Problem:
    return Problem(
        status=error.status,
        slug=error.slug,
        title=error.title,
        detail=error.detail,
        outcome=error.outcome,
        reason=error.reason,
        headers=error.headers,
        extra=error.extra,
    )


def _from_validation_error(error: RequestValidationError) -> Problem:
    issues = [
        {
            "loc": [str(part) for part in issue.get("loc", ())],
            "msg": issue.get("msg", ""),
            "type": issue.get("type"),
        }
        for issue in error.errors()
    ]
    where = "; ".join(f"{'.'.join(issue['loc'])}: {issue['msg']}" for issue in issues)
    return Problem(
        status=422,
        slug=InvalidOptionsError.slug,
        title=InvalidOptionsError.title,
        detail=where or "the request does not match the endpoint's parameters",
        outcome="rejected",
        reason=InvalidOptionsError.reason,
        extra={"errors": issues},
    )


# Statuses Starlette/FastAPI raise themselves (routing, body parsing, the body-size limit).
_HTTP_STATUS_PROBLEMS: dict[int, tuple[str, str, str]] = {
    400: ("bad-request", "Malformed request", "bad_request"),
    404: ("not-found", "Not found", "not_found"),
    405: ("method-not-allowed", "Method not allowed", "method_not_allowed"),
    413: (PayloadTooLargeError.slug, PayloadTooLargeError.title, PayloadTooLargeError.reason),
}


def _from_http_exception(error: StarletteHTTPException) -> Problem:
    slug, title, reason = _HTTP_STATUS_PROBLEMS.get(error.status_code, ("http-error", "HTTP error", "http"))
    detail = str(error.detail)
    cause = error.__cause__
    if error.status_code == 400 and cause is not None and str(cause):
        # FastAPI hides the multipart parser's message behind a generic one; the cause says what is wrong.
        detail = f"{detail}: {cause}"
    if error.status_code == 413:
        detail = "the request body is larger than this endpoint accepts"
    return Problem(
        status=error.status_code,
        slug=slug,
        title=title,
        detail=detail,
        outcome="rejected" if 400 <= error.status_code < 500 else "failed",
        reason=reason,
        headers=dict(error.headers or {}),
    )


# A job the worker answered with ``ok == False``: its error kind -> the domain error the client sees.
_RESULT_ERRORS: dict[str, tuple[type[ServiceError], str]] = {
    "expired": (DeadlineExceededError, "the deadline passed before the job was computed ({})"),
    "cancelled": (ClientClosedRequestError, "the job was cancelled ({})"),
    "bad_input": (UndecodableImageError, "the model could not use this image: {}"),
    "oom": (ModelOutOfMemoryError, "the model server ran out of memory for this face"),  # no device details
}


def error_for_result(result: JobResult) -> ServiceError:
    """The domain error for a failed job (``"internal"``, ``"dead_letter"`` and unknown kinds: 500-class
    `InferenceFailedError`, logged, with no internal detail for the client)."""
    message = result.error_message or "no detail"
    if result.error_kind in _RESULT_ERRORS:
        error_class, template = _RESULT_ERRORS[result.error_kind]
        return error_class(template.format(message))
    logger.warning("job %s failed in the worker: %s: %s", result.request_id, result.error_kind, message)
    return InferenceFailedError(f"the job failed in the worker ({result.error_kind}); quote the request id")


def problem_for(error: BaseException) -> Problem:
    """THE mapping: any exception -> the problem the client sees.

    Unknown exceptions become a generic 500 whose detail reveals nothing internal.
    """
    if isinstance(error, ServiceError):
        return _from_service_error(error)
    if isinstance(error, QueueFull):
        return Problem(
            status=429,
            slug="queue-full",
            title="Queue full",
            detail=f"the service is at capacity ({error.depth} of {error.limit} jobs queued); retry later",
            outcome="rejected",
            reason="queue_full",
            headers={"Retry-After": _retry_after(error.retry_after_s)},
        )
    if isinstance(error, BackendUnavailable):
        return Problem(
            status=503,
            slug="backend-unavailable",
            title="Queue backend unavailable",
            detail=f"the job queue cannot be reached: {error}",
            outcome="failed",
            reason="backend",
            headers={"Retry-After": _retry_after(UNAVAILABLE_RETRY_AFTER_S)},
        )
    if isinstance(error, RequestValidationError):
        return _from_validation_error(error)
    if isinstance(error, StarletteHTTPException):
        return _from_http_exception(error)
    return Problem(
        status=500,
        slug=ServiceError.slug,
        title=ServiceError.title,
        detail="an unexpected error occurred; quote the request id when reporting it",
        outcome="failed",
        reason="internal",
        unexpected=True,
    )


def problem_response(
    problem: Problem, *, instance: str | None = None, request_id: str | None = None
) -> JSONResponse:
    """Render a problem as an `application/problem+json` response with its headers."""
    return JSONResponse(
        problem.body(instance=instance, request_id=request_id),
        status_code=problem.status,
        headers=problem.headers,
        media_type=PROBLEM_MEDIA_TYPE,
    )


# A "queue full" answer is held for its Retry-After (at most this long) before it is sent: a client that
# honours Retry-After loses nothing (it would wait as long anyway), and one that retries at once is slowed
# to one refusal per Retry-After per connection, instead of spending the CPU the model needs on refusals.
MAX_QUEUE_FULL_HOLD_S = 5.0


async def handle_exception(request: Request, error: Exception) -> JSONResponse:
    """The one exception handler: map, log unexpected errors with the request id, and respond."""
    problem = problem_for(error)
    if isinstance(error, QueueFull):
        await asyncio.sleep(min(error.retry_after_s, MAX_QUEUE_FULL_HOLD_S))
    request_id = getattr(request.state, "request_id", None)
    if problem.unexpected:
        logger.error(
            "unhandled error in %s %s (request id %s)",
            request.method,
            request.url.path,
            request_id,
            exc_info=error,
        )
    request.state.problem = problem
    return problem_response(problem, instance=request.url.path, request_id=request_id)


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception class the framework can raise through `handle_exception`.

    `Exception` itself is not registered here: Starlette would hand it to its outermost middleware,
    which re-raises after responding. The API's request middleware catches it instead and calls
    the same handler.
    """
    for error_class in (
        ServiceError,
        QueueFull,
        BackendUnavailable,
        RequestValidationError,
        StarletteHTTPException,
    ):
        app.add_exception_handler(error_class, handle_exception)

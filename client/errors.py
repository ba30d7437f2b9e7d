"""Typed errors of the facesr client.

Every error the client raises is a `FaceSRClientError`. An HTTP answer with an error status becomes a
`ProblemError` subclass built from the service's RFC 9457 problem document (`application/problem+json`):
the class is chosen from the problem `type` first (`urn:facesr:problem:<slug>`), then from the status, so
an answer without a problem body (a proxy's plain-text 502, say) still gets a typed error. A request that
got no HTTP answer at all raises `FaceSRConnectionError` (or its `FaceSRTimeoutError`).

    FaceSRClientError
    ├── FaceSRConnectionError          no answer: refused, reset, DNS, TLS
    │   └── FaceSRTimeoutError         no answer within the client-side timeout
    ├── UnexpectedResponseError        a success status with a body the client cannot read
    └── ProblemError                   an error status (status, type, title, detail, request_id, ...)
        ├── RequestError               4xx
        │   ├── BadRequestError        400 other than an undecodable image (malformed multipart, ...)
        │   ├── BadImageError          the image itself was refused
        │   │   ├── UndecodableImageError      400 undecodable-image
        │   │   ├── PayloadTooLargeError       413 (too many bytes or images) ...
        │   │   │   └── ImageTooLargeError     ... 413 image-too-large (too many pixels)
        │   │   ├── UnsupportedMediaTypeError  415
        │   │   └── InputTooSmallError         422 input-too-small
        │   ├── UnauthorizedError      401 missing or wrong API key
        │   ├── NotFoundError          404 / 405 (wrong base URL or an old server)
        │   ├── NotAcceptableError     406
        │   ├── InvalidOptionsError    422 invalid-options ...
        │   │   └── UnknownModelError  ... 422 unknown-model (`available` lists the served models)
        │   └── QueueFullError         429 (retryable; `retry_after` seconds)
        └── ServerError                5xx
            ├── ServiceUnavailableError  503 (retryable; `retry_after` seconds)
            └── DeadlineExceededError    504
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, ClassVar

__all__ = [
    "PROBLEM_TYPE_PREFIX",
    "BadImageError",
    "BadRequestError",
    "DeadlineExceededError",
    "FaceSRClientError",
    "FaceSRConnectionError",
    "FaceSRTimeoutError",
    "ImageTooLargeError",
    "InputTooSmallError",
    "InvalidOptionsError",
    "NotAcceptableError",
    "NotFoundError",
    "PayloadTooLargeError",
    "ProblemError",
    "QueueFullError",
    "RequestError",
    "ServerError",
    "ServiceUnavailableError",
    "UnauthorizedError",
    "UndecodableImageError",
    "UnexpectedResponseError",
    "UnknownModelError",
    "UnsupportedMediaTypeError",
    "problem_error",
]

#: Problem types of the service are this prefix plus a slug, e.g. ``urn:facesr:problem:queue-full``.
PROBLEM_TYPE_PREFIX = "urn:facesr:problem:"


class FaceSRClientError(Exception):
    """Base class of every error raised by `facesr.client`."""


class FaceSRConnectionError(FaceSRClientError):
    """The request got no HTTP answer: connection refused or reset, name resolution, TLS.

    Raised after the client's connection retries are used up; ``__cause__`` is the httpx error.
    """


class FaceSRTimeoutError(FaceSRConnectionError):
    """No answer within the client-side timeout, or, for a request with a deadline, within that deadline
    plus a 2 s slack."""


class UnexpectedResponseError(FaceSRClientError):
    """A success status whose body is not what the endpoint documents (not JSON, fields missing)."""

    def __init__(self, message: str, *, status: int, request_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.request_id = request_id

    def __reduce__(self) -> tuple[Any, ...]:  # keyword-only arguments: pickle (multiprocessing) needs this
        return (
            functools.partial(type(self), self.message, status=self.status, request_id=self.request_id),
            (),
        )


class ProblemError(FaceSRClientError):
    """An error answer of the service, from its problem document (RFC 9457).

    Attributes:
        status: the HTTP status (for a batch item: the item's status inside a 200 answer).
        type: the problem type, ``urn:facesr:problem:<slug>``; ``about:blank`` when the answer carried
            no problem document.
        title: short summary of the problem type.
        detail: what went wrong with this request, in the service's words.
        request_id: the service's id of the request (quote it when reporting a problem), else None.
        retry_after: seconds the service asked the client to wait before retrying (the ``Retry-After``
            header, seconds or an HTTP date, as a delay >= 0), else None.
        instance: the request path the problem is about, else None.
        body: the whole problem document (extension members such as ``errors`` or ``available``
            included); empty when the answer had none.
    """

    #: True for the statuses the client retries (429 and 503).
    retryable: ClassVar[bool] = False

    def __init__(
        self,
        *,
        status: int,
        type: str = "about:blank",
        title: str = "",
        detail: str = "",
        request_id: str | None = None,
        retry_after: float | None = None,
        instance: str | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> None:
        self.status = status
        self.type = type
        self.title = title
        self.detail = detail
        self.request_id = request_id
        self.retry_after = retry_after
        self.instance = instance
        self.body: Mapping[str, Any] = dict(body or {})
        super().__init__(self._message())

    def __reduce__(self) -> tuple[Any, ...]:  # keyword-only arguments: pickle (multiprocessing) needs this
        members: dict[str, Any] = {
            "status": self.status,
            "type": self.type,
            "title": self.title,
            "detail": self.detail,
            "request_id": self.request_id,
            "retry_after": self.retry_after,
            "instance": self.instance,
            "body": dict(self.body),
        }
        return (functools.partial(type(self), **members), ())

    @property
    def slug(self) -> str:
        """The problem type without its ``urn:facesr:problem:`` prefix (``queue-full``, ...)."""
        return self.type.removeprefix(PROBLEM_TYPE_PREFIX)

    def _message(self) -> str:
        text = f"{self.status} {self.title or 'error'}"
        if self.detail:
            text += f": {self.detail}"
        if self.request_id:
            text += f" (request id {self.request_id})"
        return text

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status}, type={self.type!r}, detail={self.detail!r}, "
            f"request_id={self.request_id!r})"
        )


class RequestError(ProblemError):
    """4xx: the service refused the request as sent."""


class BadRequestError(RequestError):
    """400 other than an undecodable image: a malformed request (multipart body, headers)."""


class BadImageError(RequestError):
    """The uploaded image was refused: undecodable, wrong type, too large or too small."""


class UndecodableImageError(BadImageError):
    """400 ``undecodable-image``: empty, truncated, corrupt or not an image."""


class PayloadTooLargeError(BadImageError):
    """413: the body or one file has too many bytes, or a batch has too many images."""


class ImageTooLargeError(PayloadTooLargeError):
    """413 ``image-too-large``: the image header announces more pixels than the service accepts."""


class UnsupportedMediaTypeError(BadImageError):
    """415: not PNG, JPEG, WebP or BMP (or the part was declared as a non-image type)."""


class InputTooSmallError(BadImageError):
    """422 ``input-too-small``: the image (or the square taken from it) is too small to hold a face."""


class UnauthorizedError(RequestError):
    """401: the service needs an API key and none or a wrong one was sent."""


class NotFoundError(RequestError):
    """404 or 405: no such route (a wrong base URL or path prefix)."""


class NotAcceptableError(RequestError):
    """406: the service cannot produce the representation asked for."""


class InvalidOptionsError(RequestError):
    """422 ``invalid-options``: an option or header value outside its domain, or an unknown option."""


class UnknownModelError(InvalidOptionsError):
    """422 ``unknown-model``: no worker serves the model named; `available` lists those that are."""

    @property
    def available(self) -> list[str]:
        names = self.body.get("available")
        return [str(name) for name in names] if isinstance(names, list) else []


class QueueFullError(RequestError):
    """429 ``queue-full``: the service is at capacity; retry after `retry_after` seconds."""

    retryable = True


class ServerError(ProblemError):
    """5xx: the service failed (``inference-failed``, ``internal-error``, or a proxy's 502)."""


class ServiceUnavailableError(ServerError):
    """503: no warmed worker yet, queue backend unreachable, or out of memory; retry later."""

    retryable = True


class DeadlineExceededError(ServerError):
    """504: the request's time budget ran out before the face was computed."""


_BY_SLUG: dict[str, type[ProblemError]] = {
    "undecodable-image": UndecodableImageError,
    "bad-request": BadRequestError,
    "unauthorized": UnauthorizedError,
    "not-found": NotFoundError,
    "method-not-allowed": NotFoundError,
    "not-acceptable": NotAcceptableError,
    "payload-too-large": PayloadTooLargeError,
    "image-too-large": ImageTooLargeError,
    "unsupported-media-type": UnsupportedMediaTypeError,
    "invalid-options": InvalidOptionsError,
    "unknown-model": UnknownModelError,
    "input-too-small": InputTooSmallError,
    "queue-full": QueueFullError,
    "deadline-exceeded": DeadlineExceededError,
}

_BY_STATUS: dict[int, type[ProblemError]] = {
    400: BadRequestError,
    401: UnauthorizedError,
    404: NotFoundError,
    405: NotFoundError,
    406: NotAcceptableError,
    413: PayloadTooLargeError,
    415: UnsupportedMediaTypeError,
    422: InvalidOptionsError,
    429: QueueFullError,
    503: ServiceUnavailableError,
    504: DeadlineExceededError,
}


def error_class(status: int, problem_type: str | None) -> type[ProblemError]:
    """The class for an error answer: from the problem type when it is known and agrees with the status,
    else from the status alone."""
    if problem_type and problem_type.startswith(PROBLEM_TYPE_PREFIX):
        by_slug = _BY_SLUG.get(problem_type.removeprefix(PROBLEM_TYPE_PREFIX))
        # Trusted when it agrees with the status class (a 5xx is never reported as the client's fault).
        if by_slug is not None and issubclass(by_slug, ServerError) == (status >= 500):
            return by_slug
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return ServerError if status >= 500 else RequestError


def problem_error(
    status: int,
    document: Mapping[str, Any] | None,
    *,
    request_id: str | None = None,
    retry_after: float | None = None,
    fallback_title: str = "",
    fallback_detail: str = "",
) -> ProblemError:
    """The typed error for an error status and its problem document (None or {} when there was none).

    Members missing from the document are taken from the fallbacks (the HTTP reason phrase, the start
    of a non-problem body) and from the response headers (`request_id`, `retry_after`).
    """
    document = document or {}
    problem_type = document.get("type")
    problem_type = problem_type if isinstance(problem_type, str) and problem_type else "about:blank"
    title, detail = document.get("title"), document.get("detail")
    body_request_id = document.get("request_id")
    instance = document.get("instance")
    cls = error_class(status, problem_type)
    return cls(
        status=status,
        type=problem_type,
        title=title if isinstance(title, str) else fallback_title,
        detail=detail if isinstance(detail, str) else fallback_detail,
        request_id=body_request_id if isinstance(body_request_id, str) else request_id,
        retry_after=retry_after,
        instance=instance if isinstance(instance, str) else None,
        body=document,
    )

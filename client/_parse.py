"""Reading the service's answers: success bodies into typed results, failures into typed errors."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping
from typing import Any

import httpx
import numpy as np
from PIL import Image

from facesr.client._retry import parse_retry_after
from facesr.client.errors import (
    FaceSRConnectionError,
    FaceSRTimeoutError,
    ProblemError,
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

PROBLEM_MEDIA_TYPE = "application/problem+json"

# What a body that is not the documented document raises while it is read (binascii.Error is a ValueError,
# PIL's UnidentifiedImageError an OSError).
_MALFORMED = (KeyError, TypeError, ValueError, IndexError, OSError)


# -- failures --------------------------------------------------------------------------------------------
def request_id(response: httpx.Response) -> str | None:
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
        request_id=request_id(response),
        retry_after=parse_retry_after(response.headers.get("retry-after")),
        fallback_title=response.reason_phrase,
        fallback_detail=fallback_detail,
    )


def connection_error(
    error: httpx.TransportError, what: str, limit: str = "the client timeout"
) -> FaceSRConnectionError:
    """The typed error of an attempt that got no answer; `limit` says which time limit ran out."""
    if isinstance(error, httpx.TimeoutException) and not isinstance(error, httpx.ConnectTimeout):
        typed: FaceSRConnectionError = FaceSRTimeoutError(
            f"{what}: no answer within {limit} ({type(error).__name__})"
        )
    else:
        typed = FaceSRConnectionError(f"{what}: {type(error).__name__}: {error or 'connection failed'}")
    typed.__cause__ = error
    return typed


# -- success bodies --------------------------------------------------------------------------------------
def json_object(response: httpx.Response) -> dict[str, Any]:
    """The JSON object of a success answer; `UnexpectedResponseError` for anything else."""
    try:
        body = response.json()
    except ValueError as error:
        raise UnexpectedResponseError(
            f"{response.request.url.path}: expected JSON, got {response.headers.get('content-type')!r}",
            status=response.status_code,
            request_id=request_id(response),
        ) from error
    if not isinstance(body, dict):
        raise UnexpectedResponseError(
            f"{response.request.url.path}: expected a JSON object",
            status=response.status_code,
            request_id=request_id(response),
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
        KeyError, TypeError, ValueError, OSError: the body is not a `SuperResolved` document (`parse_face`
            turns these into `UnexpectedResponseError`).
    """
    image = _image(body["image"])
    landmarks, confidences = _landmarks(body.get("landmarks"))
    quality = body.get("landmark_quality")
    steps = body.get("steps")
    resized_from = body.get("resized_from")
    batch_size = body.get("batch_size")
    width, height = _int_or_none(body.get("width")), _int_or_none(body.get("height"))
    return SuperResolution(
        image=image,
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
        width=image.width if width is None else width,
        height=image.height if height is None else height,
    )


def parse_face(
    body: Mapping[str, Any], response: httpx.Response, headers: Mapping[str, str] | None
) -> SuperResolution:
    """`parse_super_resolved`, with a malformed body raised as `UnexpectedResponseError`."""
    try:
        return parse_super_resolved(body, headers)
    except _MALFORMED as error:
        raise UnexpectedResponseError(
            f"the answer is not a super-resolved face: {type(error).__name__}: {error}",
            status=response.status_code,
            request_id=request_id(response),
        ) from error


def parse_single(response: httpx.Response) -> SuperResolution:
    """A `SuperResolution` from the answer of POST /v1/super-resolve (body and headers)."""
    return parse_face(json_object(response), response, response.headers)


def parse_batch(response: httpx.Response) -> BatchResult:
    """A `BatchResult` from the JSON body of POST /v1/super-resolve/batch."""
    body = json_object(response)
    items: list[BatchItem] = []
    for position, entry in enumerate(body.get("items") or ()):
        if not isinstance(entry, dict):
            raise UnexpectedResponseError(
                "a batch item is not an object", status=response.status_code, request_id=request_id(response)
            )
        index = _int_or_none(entry.get("index"))
        index = position if index is None else index
        filename = entry.get("filename") if isinstance(entry.get("filename"), str) else None
        result = entry.get("result")
        if entry.get("ok") and isinstance(result, dict):
            items.append(BatchItem(index=index, filename=filename, result=parse_face(result, response, None)))
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
    """The `ModelInfo`s of GET /v1/models."""
    body = json_object(response)
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


def parse_health(response: httpx.Response) -> Health:
    """The `Health` of GET /healthz."""
    return Health(status=str(json_object(response).get("status", "")))


def parse_readiness(response: httpx.Response) -> Readiness:
    """The `Readiness` of a success answer of GET /readyz."""
    body = json_object(response)
    models = body.get("models")
    return Readiness(
        ready=bool(body.get("ready", False)),
        detail=str(body.get("detail", "")),
        mode=body.get("mode") if isinstance(body.get("mode"), str) else None,
        ready_workers=_int_or_none(body.get("ready_workers")) or 0,
        models=tuple(str(name) for name in models) if isinstance(models, list) else (),
        queue_depth=_int_or_none(body.get("queue_depth")) or 0,
    )

"""FastAPI dependencies as `Annotated` aliases: service state, deadline, options.

(Authentication is not a dependency: see `guards.py`, it must run before the body is read.)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Depends, Header, Query, Request
from pydantic import BeforeValidator, Field

from facesr.model.input_policy import DEFAULT_FIT, Fit
from facesr.service.api.state import ServiceState
from facesr.service.errors import InvalidOptionsError
from facesr.service.images import OutputFormat
from facesr.service.settings import ServiceSettings

DEADLINE_HEADER = "X-Deadline-Ms"


def get_service(request: Request) -> ServiceState:
    return request.app.state.service


Service = Annotated[ServiceState, Depends(get_service)]


@dataclass(frozen=True)
class Deadline:
    """The request's absolute deadline (time.time() seconds) and its budget in ms."""

    at: float


_DEFAULT_MAX_DEADLINE_MS = ServiceSettings.model_fields["max_deadline_ms"].default


def _digits_only(value: object) -> object:
    """Before int parsing: plain decimal digits only (pydantic alone would take "1.0" or "1_000")."""
    if isinstance(value, str):
        text = value.strip()
        if not (text.isascii() and text.isdigit()):
            raise ValueError("must be a positive integer (milliseconds, digits only)")
        return text
    return value


DeadlineHeader = Annotated[
    Annotated[int, Field(ge=1)] | None,
    BeforeValidator(_digits_only),
    Header(
        alias=DEADLINE_HEADER,
        description="Time budget of this request in milliseconds, queue wait included: a positive integer. "
        "Larger values are capped, not refused, at the server's FACESR_MAX_DEADLINE_MS "
        f"(default {_DEFAULT_MAX_DEADLINE_MS} ms); without the header the budget is "
        "FACESR_DEFAULT_DEADLINE_MS. An invalid value is refused with 422 (invalid-options).",
    ),
]


async def get_deadline(request: Request, service: Service, deadline_ms: DeadlineHeader = None) -> Deadline:
    """Budget from `X-Deadline-Ms` (a positive integer, validated above, capped by configuration) or the
    default."""
    settings = service.settings
    if deadline_ms is None:
        budget = settings.default_deadline_ms
    else:
        budget = min(deadline_ms, settings.max_deadline_ms)
    arrived_at = getattr(request.state, "arrived_at", None) or time.time()
    return Deadline(at=arrived_at + budget / 1000.0)


RequestDeadline = Annotated[Deadline, Depends(get_deadline)]


@dataclass(frozen=True)
class InferenceOptions:
    """Options of the super-resolution endpoints (query parameters)."""

    format: OutputFormat | None
    quality: int
    landmarks: bool | None
    steps: bool
    model: str | None
    fit: Fit
    compare: bool


OPTION_NAMES = frozenset({"format", "quality", "landmarks", "steps", "model", "fit", "compare"})


async def get_inference_options(
    request: Request,
    format: Annotated[
        Literal["png", "jpeg", "webp"] | None,
        Query(description="Encoding of the output image; default: from Accept, else png."),
    ] = None,
    quality: Annotated[int, Query(ge=1, le=100, description="JPEG/WebP quality (ignored for png).")] = 95,
    landmarks: Annotated[
        bool | None,
        Query(description="Include the 68 landmarks (JSON only; default true for JSON responses)."),
    ] = None,
    steps: Annotated[bool, Query(description="Include every feedback step's image (JSON only).")] = False,
    fit: Annotated[
        Fit,
        Query(
            description="How a non-square upload becomes square: `crop` (the centred square) or `pad` "
            "(edge pixels repeated); the aspect ratio is never distorted."
        ),
    ] = DEFAULT_FIT,
    compare: Annotated[
        bool,
        Query(description="Also return the 16x16 model input and its bicubic enlargement (JSON only)."),
    ] = False,
    model: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=64,
            pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
            description="Model name (see GET /v1/models); default: the configured or only model.",
        ),
    ] = None,
) -> InferenceOptions:
    unknown = sorted(set(request.query_params) - OPTION_NAMES)
    if unknown:
        # A misspelt option must not be ignored silently.
        raise InvalidOptionsError(
            f"unknown option(s) {', '.join(unknown)}; valid options: {', '.join(sorted(OPTION_NAMES))}"
        )
    return InferenceOptions(
        format=format,
        quality=quality,
        landmarks=landmarks,
        steps=steps,
        model=model,
        fit=fit,
        compare=compare,
    )


Options = Annotated[InferenceOptions, Depends(get_inference_options)]

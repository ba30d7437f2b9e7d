"""FastAPI dependencies as `Annotated` aliases: service state, deadline, options.

(Authentication is not a dependency: see `guards.py`, it must run before the body is read.)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Depends, Header, Query, Request

from facesr.service.api.state import ServiceState
from facesr.service.errors import InvalidOptionsError
from facesr.service.images import OutputFormat

DEADLINE_HEADER = "X-Deadline-Ms"


def get_service(request: Request) -> ServiceState:
    return request.app.state.service


Service = Annotated[ServiceState, Depends(get_service)]


@dataclass(frozen=True)
class Deadline:
    """The request's absolute deadline (time.time() seconds) and its budget in ms."""

    at: float


async def get_deadline(
    request: Request,
    service: Service,
    deadline_ms: Annotated[
        str | None,
        Header(
            alias=DEADLINE_HEADER,
            description="Time budget of this request in milliseconds, queue wait included; capped by "
            "the server's FACESR_MAX_DEADLINE_MS.",
        ),
    ] = None,
) -> Deadline:
    """Budget from `X-Deadline-Ms` (a positive integer, capped by configuration) or the default."""
    settings = service.settings
    if deadline_ms is None:
        budget = settings.default_deadline_ms
    else:
        try:
            budget = int(deadline_ms.strip())
        except ValueError:
            raise InvalidOptionsError(
                f"{DEADLINE_HEADER} must be a positive integer (ms), got {deadline_ms!r}"
            ) from None
        if budget < 1:
            raise InvalidOptionsError(f"{DEADLINE_HEADER} must be a positive integer (ms), got {budget}")
        budget = min(budget, settings.max_deadline_ms)
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


OPTION_NAMES = frozenset({"format", "quality", "landmarks", "steps", "model"})


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
    return InferenceOptions(format=format, quality=quality, landmarks=landmarks, steps=steps, model=model)


Options = Annotated[InferenceOptions, Depends(get_inference_options)]

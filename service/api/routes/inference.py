"""POST /v1/super-resolve and POST /v1/super-resolve/batch.

Batch semantics (the documented choice): problems of the request as a whole — authentication,
body size, too many images, bad options, Accept, no ready model, client gone — fail the whole
request with their status. Problems of one image — undecodable, unsupported type, too many
pixels, too large, a worker error for that job — become that item's `error` (a problem document)
inside a 200, next to the other items' results. One exception: when no item succeeded and every
item failed with the same service-level status (429 queue full, 503 unavailable, 504 deadline),
the whole request fails with that status, so clients get one clear answer and a Retry-After.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, File, Request, Response, UploadFile
from fastapi.responses import JSONResponse

from facesr.model.input_policy import ACCEPTED_FORMATS_TEXT, MIN_INPUT_SIDE, Fit
from facesr.model.landmark_quality import STATUS_SUMMARIES, LandmarkStatus
from facesr.service.api.deps import Options, RequestDeadline, Service
from facesr.service.api.middleware import count_problem
from facesr.service.api.negotiation import Representation, negotiate
from facesr.service.api.pipeline import (
    EncodedFace,
    encode_face,
    make_job,
    read_upload,
    run_jobs,
)
from facesr.service.api.schemas import (
    BatchItem,
    BatchResponse,
    InputInfo,
    ItemProblem,
    LandmarkPoint,
    LandmarkQualityInfo,
    SuperResolved,
    problem_responses,
)
from facesr.service.api.state import ServiceState
from facesr.service.api.timing import PhaseTimings
from facesr.service.errors import (
    InvalidOptionsError,
    NotAcceptableError,
    PayloadTooLargeError,
    ServiceError,
    error_for_result,
    problem_for,
)
from facesr.service.images import OUTPUT_MEDIA_TYPES, DecodedUpload, PixelBudget
from facesr.service.queue.jobs import Job, JobOptions, JobResult

SINGLE_PATH = "/v1/super-resolve"
BATCH_PATH = "/v1/super-resolve/batch"
# Statuses that describe the service rather than an image: a batch failing only with one of them fails whole.
_SERVICE_LEVEL_STATUSES = frozenset({429, 503, 504})

# Two routers so that each endpoint gets its own request-body limit (see `create_app`).
single_router = APIRouter(tags=["inference"])
batch_router = APIRouter(tags=["inference"])


def job_options(options: Options, representation: Representation) -> JobOptions:
    """What the worker must return; refuses extras that the chosen representation cannot carry."""
    if representation.kind == "image":
        if options.steps:
            raise NotAcceptableError(
                "per-step images need `Accept: application/json` (an image response holds one image)"
            )
        if options.landmarks:
            raise NotAcceptableError(
                "landmarks need `Accept: application/json` (an image response carries no landmarks)"
            )
        if options.compare:
            raise NotAcceptableError(
                "comparison images need `Accept: application/json` (an image response holds one image)"
            )
        return JobOptions(return_steps=False, landmarks=False)
    landmarks = True if options.landmarks is None else options.landmarks
    return JobOptions(return_steps=options.steps, landmarks=landmarks)


_SHOWN_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-[]")


def _shown_name(name: str) -> str:
    """A client-chosen field name as a detail may quote it: at most 32 plain characters, others as '?'."""
    shown = "".join(char if char in _SHOWN_NAME_CHARS else "?" for char in name[:32])
    return f"'{shown}...'" if len(name) > 32 else f"'{shown}'"


async def check_form_fields(request: Request, *, field: str, single: bool) -> None:
    """Refuse (422) form parts the endpoint would otherwise ignore silently.

    The body may hold `field` parts only: an unknown part (a misspelt name, an option sent as a form
    field instead of a query parameter) is refused, and so is a second `field` part on the endpoint
    that takes one image, instead of computing one of them and dropping the other.
    (FastAPI has parsed the form already; this reads its cached copy.)
    """
    form = await request.form()
    unknown = sorted({name for name in form if name != field})
    if unknown:
        shown = ", ".join(_shown_name(name) for name in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        raise InvalidOptionsError(
            f"unknown form field(s) {shown}; this endpoint takes only '{field}' file parts "
            "(options are query parameters)"
        )
    count = len(form.getlist(field))
    if single and count > 1:
        raise InvalidOptionsError(
            f"{count} '{field}' parts; this endpoint takes exactly one image "
            f"(send several to POST {BATCH_PATH} as 'images' parts)"
        )


def _landmark_points(landmarks: list[list[float]] | None) -> list[LandmarkPoint] | None:
    if landmarks is None:
        return None
    return [LandmarkPoint(x=float(x), y=float(y), confidence=float(c)) for x, y, c in landmarks]


def _landmark_quality(status: LandmarkStatus | None) -> LandmarkQualityInfo | None:
    if status is None:
        return None
    summary = STATUS_SUMMARIES[status]
    if status in ("passed", "failed"):
        summary += " (see GET /v1/models)"  # where the numbers are
    return LandmarkQualityInfo(status=status, message=summary)


def _json_body(face: EncodedFace, request_id: str, model: str, timings: PhaseTimings) -> SuperResolved:
    batch_size = face.result.timings.get("batch_size")
    return SuperResolved(
        request_id=request_id,
        model=model,
        model_id=face.result.model_id or model,
        media_type=face.media_type,
        image=face.image_base64,
        landmarks=_landmark_points(face.landmarks),
        landmark_quality=_landmark_quality(face.result.landmark_status),
        steps=face.steps_base64,
        resized_from=face.upload.resized_from,
        input=_input_info(face.upload),
        lr_image=face.lr_base64,
        bicubic_image=face.bicubic_base64,
        batch_size=int(batch_size) if batch_size is not None else None,
        timings_ms=timings.milliseconds(),
    )


def _input_info(upload: DecodedUpload) -> InputInfo:
    """The input policy's record (`InputTransform.as_dict`, shared with the CLI) plus the format."""
    return InputInfo.model_validate({"format": upload.header.format, **upload.transform.as_dict()})


def _result_headers(face: EncodedFace, timings: PhaseTimings) -> dict[str, str]:
    headers = {"Server-Timing": timings.server_timing(), "Vary": "Accept"}
    if face.result.model_id:
        headers["X-Model-Id"] = face.result.model_id
    transform = face.upload.transform
    headers["X-Input-Transform"] = transform.describe()
    if transform.warnings:
        headers["X-Input-Warnings"] = ", ".join(warning.code for warning in transform.warnings)
    if face.upload.resized_from is not None:
        width, height = face.upload.resized_from
        headers["X-Resized-From"] = f"{width}x{height}"
    return headers


@single_router.post(
    SINGLE_PATH,
    summary="Super-resolve one face (16x16 -> 128x128)",
    response_model=SuperResolved,
    responses={
        200: {
            "description": "The image (Accept: image/*, the default) or JSON (Accept: application/json).",
            "content": {media: {} for media in OUTPUT_MEDIA_TYPES.values()},
            "headers": {
                "X-Input-Transform": {
                    "description": "What the input policy did, e.g. 'crop 0,500 2000x2000; resize 2000->16 "
                    "bicubic', or 'none'."
                },
                "X-Input-Warnings": {
                    "description": "Comma-separated warning codes (upscaled, larger-than-output, not-square)."
                },
                "X-Resized-From": {"description": "WIDTHxHEIGHT of an upload that was not 16x16."},
                "X-Model-Id": {"description": "Model name and weights hash."},
                "Server-Timing": {"description": "decode, queue, compute, encode and total (ms)."},
            },
        },
        **problem_responses(400, 401, 406, 413, 415, 422, 429, 503, 504),
    },
)
async def super_resolve(
    request: Request,
    service: Service,
    options: Options,
    deadline: RequestDeadline,
    image: Annotated[
        UploadFile,
        File(
            description=f"The face: {ACCEPTED_FORMATS_TEXT}, at least {MIN_INPUT_SIDE}x{MIN_INPUT_SIDE} "
            "pixels; exactly one part."
        ),
    ],
) -> Response:
    await check_form_fields(request, field="image", single=True)
    representation = negotiate(request.headers.get("accept"), requested_format=options.format)
    wanted = job_options(options, representation)
    model = await service.resolve_model(options.model)
    timings = PhaseTimings()
    budget = PixelBudget(service.settings.max_request_pixels)
    upload = await read_upload(image, service, timings, budget, fit=options.fit)
    request_id: str = request.state.request_id
    job = make_job(request_id, model, upload, wanted, deadline)
    [outcome] = await run_jobs(service.backend, request, [job])
    if isinstance(outcome, Exception):
        raise outcome
    if not outcome.ok:
        raise error_for_result(outcome)
    timings.add_worker_timings(outcome.timings)
    face = await encode_face(
        outcome, upload, representation.format, options.quality, timings, compare=options.compare
    )
    headers = _result_headers(face, timings)
    if representation.kind == "image":
        return Response(face.image, media_type=face.media_type, headers=headers)
    body = _json_body(face, request_id, model, timings)
    return JSONResponse(body.model_dump(mode="json"), headers=headers)


async def _read_or_problem(
    upload: UploadFile, service: ServiceState, timings: PhaseTimings, budget: PixelBudget, fit: Fit
) -> DecodedUpload | ServiceError:
    try:
        return await read_upload(upload, service, timings, budget, fit=fit)
    except ServiceError as error:
        return error


def _item_error(index: int, filename: str | None, error: Exception) -> BatchItem:
    problem = problem_for(error)
    count_problem(problem)
    document = ItemProblem(
        type=problem.type, title=problem.title, status=problem.status, detail=problem.detail
    )
    return BatchItem(index=index, filename=filename, ok=False, error=document)


def _fail_whole_batch_if_uniform(failures: list[Exception]) -> None:
    """Raise the shared error when every item failed for the same service-level reason."""
    statuses = {problem_for(error).status for error in failures}
    if len(statuses) == 1 and statuses <= _SERVICE_LEVEL_STATUSES:
        raise failures[0]


@batch_router.post(
    BATCH_PATH,
    summary="Super-resolve several faces in one request (JSON only)",
    response_model=BatchResponse,
    responses=problem_responses(401, 406, 413, 415, 422, 429, 503, 504),
)
async def super_resolve_batch(
    request: Request,
    service: Service,
    options: Options,
    deadline: RequestDeadline,
    images: Annotated[
        list[UploadFile], File(description="Several faces, one file part each; no other form fields.")
    ],
) -> JSONResponse:
    await check_form_fields(request, field="images", single=False)
    representation = negotiate(
        request.headers.get("accept"), requested_format=options.format, allow_image=False
    )
    wanted = job_options(options, representation)
    limit = service.settings.max_batch_images
    if len(images) > limit:
        raise PayloadTooLargeError(f"{len(images)} images in one batch; the limit is {limit}")
    model = await service.resolve_model(options.model)
    request_id: str = request.state.request_id

    item_timings = [PhaseTimings() for _ in images]
    budget = PixelBudget(service.settings.max_request_pixels)  # shared by the batch's images
    decoded = await asyncio.gather(
        *(
            _read_or_problem(upload, service, timings, budget, options.fit)
            for upload, timings in zip(images, item_timings, strict=True)
        )
    )
    jobs: dict[int, Job] = {
        index: make_job(f"{request_id}.{index}", model, upload, wanted, deadline)
        for index, upload in enumerate(decoded)
        if isinstance(upload, DecodedUpload)
    }
    outcomes = await run_jobs(service.backend, request, list(jobs.values()))

    errors: dict[int, Exception] = {
        index: upload for index, upload in enumerate(decoded) if isinstance(upload, ServiceError)
    }
    finished: dict[int, JobResult] = {}
    for index, outcome in zip(jobs, outcomes, strict=True):
        if isinstance(outcome, Exception):
            errors[index] = outcome
        elif not outcome.ok:
            errors[index] = error_for_result(outcome)
        else:
            finished[index] = outcome
    if not finished:
        _fail_whole_batch_if_uniform(list(errors.values()))

    items: list[BatchItem] = []
    for index, upload_file in enumerate(images):
        if index in errors:
            items.append(_item_error(index, upload_file.filename, errors[index]))
            continue
        upload = decoded[index]
        assert isinstance(upload, DecodedUpload)
        timings = item_timings[index]
        timings.add_worker_timings(finished[index].timings)
        face = await encode_face(
            finished[index], upload, representation.format, options.quality, timings, compare=options.compare
        )
        result = _json_body(face, f"{request_id}.{index}", model, timings)
        items.append(BatchItem(index=index, filename=upload_file.filename, ok=True, result=result))
    succeeded = sum(item.ok for item in items)
    body = BatchResponse(
        request_id=request_id, succeeded=succeeded, failed=len(items) - succeeded, items=items
    )
    return JSONResponse(body.model_dump(mode="json"), headers={"Vary": "Accept"})

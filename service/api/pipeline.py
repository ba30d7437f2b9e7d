"""From uploaded files to finished faces: decode, queue, wait (deadline and disconnect), encode.

The routes only negotiate and render; everything between the upload and the encoded result lives
here, shared by the single and the batch endpoint.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

from fastapi import Request, UploadFile
from starlette.concurrency import run_in_threadpool

from facesr.model.input_policy import DEFAULT_FIT, Fit
from facesr.model.preprocess import bicubic_baseline
from facesr.service.api.deps import Deadline
from facesr.service.api.state import SMALL_UPLOAD_PIXELS, ServiceState
from facesr.service.api.timing import PhaseTimings
from facesr.service.errors import ClientClosedRequestError, InferenceFailedError, PayloadTooLargeError
from facesr.service.images import (
    OUTPUT_MEDIA_TYPES,
    DecodedUpload,
    OutputFormat,
    PixelBudget,
    check_part_type,
    check_size,
    decode_upload,
    encode_image,
    read_header,
)
from facesr.service.queue.base import BackendUnavailable, QueueBackend, QueueFull
from facesr.service.queue.jobs import Job, JobOptions, JobResult

logger = logging.getLogger("facesr.service")


@dataclass(frozen=True)
class EncodedFace:
    """A finished face: encoded image bytes (and steps), landmarks, and where it came from."""

    image: bytes
    media_type: str
    steps: list[bytes] | None
    landmarks: list[list[float]] | None
    upload: DecodedUpload
    result: JobResult
    lr_image: bytes | None = None  # with `compare`: the 16 x 16 model input, PNG
    bicubic_image: bytes | None = None  # with `compare`: its bicubic enlargement, in `media_type`

    @property
    def image_base64(self) -> str:
        return _base64(self.image)

    @property
    def lr_base64(self) -> str | None:
        return None if self.lr_image is None else _base64(self.lr_image)

    @property
    def bicubic_base64(self) -> str | None:
        return None if self.bicubic_image is None else _base64(self.bicubic_image)

    @property
    def steps_base64(self) -> list[str] | None:
        return None if self.steps is None else [_base64(step) for step in self.steps]


def _base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


async def read_upload(
    upload: UploadFile,
    service: ServiceState,
    timings: PhaseTimings,
    budget: PixelBudget,
    *,
    fit: Fit = DEFAULT_FIT,
) -> DecodedUpload:
    """Validate one file part and turn it into the 16 x 16 model input (the input policy, with ``fit``).

    Decoding runs in a thread. A large image (above `SMALL_UPLOAD_PIXELS`, from its header) waits for
    one of `service.decode_slots`: a large photo decodes to tens of megabytes and CPU-seconds, and an
    unbounded number of them at once would starve everything else. Small ones decode at once.

    Raises UnsupportedMediaTypeError, UndecodableImageError, PayloadTooLargeError, ImageTooLargeError or
    FaceTooSmallError.
    """
    settings = service.settings
    check_part_type(upload.content_type)
    if upload.size is not None and upload.size > settings.max_upload_bytes:
        raise PayloadTooLargeError(
            f"the uploaded file has {upload.size} bytes; the limit is {settings.max_upload_bytes}"
        )
    data = await upload.read(settings.max_upload_bytes + 1)
    check_size(data, settings.max_upload_bytes)
    header = await run_in_threadpool(read_header, data, settings.max_pixels)  # refusals cost no decoding
    decode = functools.partial(
        decode_upload,
        data,
        max_bytes=settings.max_upload_bytes,
        max_pixels=settings.max_pixels,
        budget=budget,
        fit=fit,
    )
    if header.width * header.height <= SMALL_UPLOAD_PIXELS:
        with timings.measure("decode"):
            return await run_in_threadpool(decode)
    async with service.decode_slots:
        with timings.measure("decode"):
            return await run_in_threadpool(decode)


def make_job(
    request_id: str, model: str, upload: DecodedUpload, options: JobOptions, deadline: Deadline
) -> Job:
    """A queue job; its id extends the request id with a random suffix, so clients reusing an
    `X-Request-ID` concurrently cannot collide inside the queue, while logs stay greppable."""
    return Job(
        request_id=f"{request_id}~{secrets.token_hex(4)}",
        model=model,
        lr_rgb=upload.lr_rgb,
        options=options,
        enqueued_at=time.time(),
        deadline=deadline.at,
    )


async def _wait_for_disconnect(request: Request) -> None:
    """Return when the client goes away (the body has already been read, so only
    `http.disconnect` can arrive)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def run_jobs(backend: QueueBackend, request: Request, jobs: list[Job]) -> list[JobResult | Exception]:
    """Submit `jobs` and wait for all of them, or until the client goes away.

    The queue keeps each job's deadline (`Job.deadline`): a job not answered by then comes back as an
    ``"expired"`` result, so waiting here needs no timer of its own. Returns one entry per job, in order:
    its `JobResult`, or the exception that stands for it (QueueFull / BackendUnavailable at admission).
    Jobs still open when this returns or raises are cancelled (by cancelling their futures, the queue's
    one cancel API), so workers skip them.

    Raises:
        ClientClosedRequestError: the client disconnected while waiting.
    """
    outcomes: list[JobResult | Exception | None] = [None] * len(jobs)
    futures: dict[int, asyncio.Future[JobResult]] = {}
    try:
        for index, job in enumerate(jobs):
            try:
                futures[index] = await backend.submit(job)
            except (QueueFull, BackendUnavailable) as error:
                outcomes[index] = error
        if futures:
            await _wait_all(list(futures.values()), request)
        for index, future in futures.items():
            outcomes[index] = _outcome_of(future)
    finally:
        for future in futures.values():
            future.cancel()  # no-op for the answered ones
    finished = [outcome for outcome in outcomes if outcome is not None]
    assert len(finished) == len(jobs), "every job has an outcome"
    return finished


async def _wait_all(futures: list[asyncio.Future[JobResult]], request: Request) -> None:
    disconnect: asyncio.Future[None] = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        waiting: set[asyncio.Future[Any]] = set(futures)
        while waiting:
            done, waiting = await asyncio.wait(waiting | {disconnect}, return_when=asyncio.FIRST_COMPLETED)
            if disconnect in done:
                raise ClientClosedRequestError("the client disconnected before the result was ready")
            waiting.discard(disconnect)
    finally:
        disconnect.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await disconnect


def _outcome_of(future: asyncio.Future[JobResult]) -> JobResult | Exception:
    error = future.exception()
    if error is not None:
        return error if isinstance(error, Exception) else BackendUnavailable(str(error))
    return future.result()


def _encode_face(
    result: JobResult, upload: DecodedUpload, output_format: OutputFormat, quality: int, compare: bool
) -> EncodedFace:
    if result.sr_rgb is None:
        raise InferenceFailedError("the worker answered without an image")
    image = encode_image(result.sr_rgb, output_format, quality=quality)
    steps = None
    if result.step_rgb is not None:
        steps = [encode_image(step, output_format, quality=quality) for step in result.step_rgb]
    lr_image = bicubic_image = None
    if compare:
        lr_image = encode_image(upload.lr_rgb, "png")
        baseline = bicubic_baseline(upload.lr_rgb, size=result.sr_rgb.shape[0])
        bicubic_image = encode_image(baseline, output_format, quality=quality)
    return EncodedFace(
        image=image,
        media_type=OUTPUT_MEDIA_TYPES[output_format],
        steps=steps,
        landmarks=result.landmarks,
        upload=upload,
        result=result,
        lr_image=lr_image,
        bicubic_image=bicubic_image,
    )


async def encode_face(
    result: JobResult,
    upload: DecodedUpload,
    output_format: OutputFormat,
    quality: int,
    timings: PhaseTimings,
    *,
    compare: bool = False,
) -> EncodedFace:
    """Encode a successful result (in a thread: WebP and multi-step PNGs take milliseconds); with
    ``compare`` also the model input (PNG) and its bicubic enlargement to the result's size."""
    with timings.measure("encode"):
        return await run_in_threadpool(_encode_face, result, upload, output_format, quality, compare)

"""Wire formats for jobs and replies: JSON metadata plus raw bytes, never pickle.

A job becomes the field map of one stream entry::

    rid    request id (UTF-8)
    model  model name
    reply  id of the API process whose reply list gets the answer
    meta   JSON {"v": 1, "opts": {...}, "enq": float, "dl": float | null, "shape": [H, W]}
    lr     the raw H x W x 3 uint8 input (row-major)

A reply is one binary frame pushed on a list::

    4-byte big-endian header length | JSON header | blob 0 | blob 1 | ...

where the header lists the blob lengths (the final image first, then one per step) and the images'
[H, W] (every image of a reply has the same size). This module is the only place where images are bytes:
jobs and results hold H x W x 3 uint8 arrays everywhere else. Decoders raise :class:`CodecError` with a
message on anything malformed.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any, Final, cast

import numpy as np

from facesr.model.landmark_quality import LANDMARK_STATUSES, LandmarkStatus
from facesr.service.queue import wire
from facesr.service.queue.jobs import ERROR_KINDS, Job, JobOptions, JobResult
from facesr.service.queue.source import WorkerInfo
from facesr.service.queue.wire import CodecError

__all__ = [
    "CodecError",
    "decode_heartbeat",
    "decode_job",
    "decode_result",
    "encode_heartbeat",
    "encode_job",
    "encode_result",
    "peek_routing",
]

VERSION: Final = 1
_HEADER_LEN = struct.Struct(">I")
#: Largest image side a job or reply may declare (models take 16 px and give 128 px; far above both).
MAX_IMAGE_SIDE: Final = 4096
#: Size bounds of what is read back (each well above what this code writes: metadata about 150 bytes,
#: a reply header with 68 landmarks about 4 KiB, a heartbeat with one model card about 8 KiB).
MAX_REQUEST_ID: Final = 256
MAX_META_BYTES: Final = 4_096
MAX_HEADER_BYTES: Final = 64 * 1024
MAX_HEARTBEAT_BYTES: Final = 512 * 1024
MAX_IMAGE_BYTES: Final = MAX_IMAGE_SIDE * MAX_IMAGE_SIDE * 3
MAX_STEPS: Final = 64
MAX_MODELS: Final = 64
#: Times read from the wire (``time.time()`` seconds) must lie between 2001 and 2286.
EARLIEST_TIME, LATEST_TIME = 1e9, 1e10


def encode_job(job: Job, reply_to: str) -> dict[str, bytes]:
    """Field map for XADD (values as bytes)."""
    meta = {
        "v": VERSION,
        "opts": {"return_steps": job.options.return_steps, "landmarks": job.options.landmarks},
        "enq": job.enqueued_at,
        "dl": job.deadline if math.isfinite(job.deadline) else None,
        "shape": list(_rgb_shape(job.lr_rgb)),
    }
    return {
        "rid": job.request_id.encode(),
        "model": job.model.encode(),
        "reply": reply_to.encode(),
        "meta": json.dumps(meta, separators=(",", ":")).encode(),
        "lr": np.ascontiguousarray(job.lr_rgb, dtype=np.uint8).tobytes(),
    }


def _rgb_shape(image: np.ndarray) -> tuple[int, int]:
    """(H, W) of an H x W x 3 uint8 image; anything else is a programming error on the sending side."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"images must be H x W x 3 uint8, got {image.shape} {image.dtype}")
    return int(image.shape[0]), int(image.shape[1])


def _declared_shape(value: Any) -> tuple[int, int]:
    """An [H, W] read from the wire, checked before any array is made from it."""
    if not isinstance(value, list) or len(value) != 2:
        raise CodecError(f"image shape must be [H, W] with sides in 1..{MAX_IMAGE_SIDE}")
    height, width = (wire.integer(side, "image side", low=1, high=MAX_IMAGE_SIDE) for side in value)
    return height, width


def _image(data: bytes, shape: tuple[int, int]) -> np.ndarray:
    """Raw bytes -> a writable H x W x 3 uint8 array, when the length matches the shape."""
    height, width = shape
    if len(data) != height * width * 3:
        raise CodecError(
            f"image has {len(data)} bytes, expected {height * width * 3} for {height}x{width} RGB"
        )
    return np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3).copy()


def peek_routing(fields: Mapping[Any, Any]) -> tuple[str | None, str | None]:
    """(request id, reply-to) of an entry, as far as they can be read, for error replies to bad entries."""
    routing: list[str | None] = []
    for key, read in (("rid", _request_id), ("reply", lambda v: wire.name(v, "reply address"))):
        try:
            routing.append(read(wire.field(fields, key, what="job entry", max_bytes=MAX_REQUEST_ID)))
        except CodecError:
            routing.append(None)
    return routing[0], routing[1]


def _request_id(value: Any) -> str:
    return wire.text(value, "request id", max_length=MAX_REQUEST_ID)


def decode_job(fields: Mapping[Any, Any]) -> tuple[Job, str]:
    """(job, reply_to) from a stream entry's field map. Raises :class:`CodecError` and nothing else.

    The input's size against the model is checked by the worker; here only against its declared shape.
    """
    what = "job entry"
    try:
        rid = _request_id(wire.field(fields, "rid", what=what, max_bytes=MAX_REQUEST_ID))
        model = wire.name(wire.field(fields, "model", what=what, max_bytes=200), "model name")
        reply_to = wire.name(wire.field(fields, "reply", what=what, max_bytes=200), "reply address")
        raw_meta = wire.field(fields, "meta", what=what, max_bytes=MAX_META_BYTES)
        meta = wire.mapping(
            wire.load_json(raw_meta, what="metadata", max_bytes=MAX_META_BYTES), "metadata", max_items=16
        )
        if meta.get("v") != VERSION:
            raise CodecError(f"job metadata version must be {VERSION}")
        opts = wire.mapping(meta.get("opts"), "job options", max_items=8)
        options = JobOptions(
            return_steps=wire.boolean(opts.get("return_steps"), "option return_steps"),
            landmarks=wire.boolean(opts.get("landmarks"), "option landmarks"),
        )
        enqueued_at = wire.number(meta.get("enq"), "enqueue time", low=EARLIEST_TIME, high=LATEST_TIME)
        deadline = math.inf
        if meta.get("dl") is not None:
            deadline = wire.number(meta["dl"], "deadline", low=EARLIEST_TIME, high=LATEST_TIME)
        lr = _image(
            wire.field(fields, "lr", what=what, max_bytes=MAX_IMAGE_BYTES), _declared_shape(meta.get("shape"))
        )
    except CodecError:
        raise
    except Exception as error:  # a reader missed a case: still a bad entry, never a crash
        raise CodecError(f"job entry could not be read ({type(error).__name__})") from error
    job = Job(
        request_id=rid, model=model, lr_rgb=lr, options=options, enqueued_at=enqueued_at, deadline=deadline
    )
    return job, reply_to


def encode_result(result: JobResult) -> bytes:
    """One reply frame (see the module docstring)."""
    images = ([] if result.sr_rgb is None else [result.sr_rgb]) + list(result.step_rgb or [])
    shapes = {_rgb_shape(image) for image in images}
    if len(shapes) > 1:
        raise ValueError(f"the images of one reply must share a size, got {sorted(shapes)}")
    blobs = [np.ascontiguousarray(image).tobytes() for image in images]
    header = {
        "v": VERSION,
        "rid": result.request_id,
        "ok": result.ok,
        "has_sr": result.sr_rgb is not None,
        "steps": None if result.step_rgb is None else len(result.step_rgb),
        "blobs": [len(b) for b in blobs],
        "shape": list(shapes.pop()) if shapes else None,
        "landmarks": result.landmarks,
        "landmark_status": result.landmark_status,
        "model_id": result.model_id,
        "worker_id": result.worker_id,
        "timings": result.timings,
        "error_kind": result.error_kind,
        "error_message": result.error_message,
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    return b"".join([_HEADER_LEN.pack(len(head)), head, *blobs])


MAX_LANDMARKS: Final = 1024


def _landmarks(value: Any) -> list[list[float]] | None:
    """A reply's landmarks: None, or up to MAX_LANDMARKS finite [x, y, confidence], confidence in [0, 1]."""
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > MAX_LANDMARKS:
        raise CodecError("reply landmarks must be a list of at most 1024 points")
    points = []
    for point in value:
        if (
            not isinstance(point, list)
            or len(point) != 3
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in point)
        ):
            raise CodecError("each reply landmark must be [x, y, confidence] numbers")
        x, y, confidence = (float(v) for v in point)
        if not (math.isfinite(x) and math.isfinite(y) and 0.0 <= confidence <= 1.0):
            raise CodecError("reply landmarks must be finite, with a confidence within [0, 1]")
        points.append([x, y, confidence])
    return points


def _landmark_status(value: Any) -> LandmarkStatus | None:
    if value is None or value in LANDMARK_STATUSES:
        return cast("LandmarkStatus | None", value)
    raise CodecError("reply landmark_status is not one of passed, failed, unevaluated, absent")


def _error_kind(value: Any) -> str | None:
    if value is None or value in ERROR_KINDS:
        return value
    raise CodecError(f"reply error_kind is not one of {', '.join(sorted(ERROR_KINDS))}")


def decode_result(frame: object) -> JobResult:
    """Inverse of :func:`encode_result`. Raises :class:`CodecError` and nothing else."""
    if not isinstance(frame, bytes):
        raise CodecError("reply frame is not bytes")
    if len(frame) < _HEADER_LEN.size:
        raise CodecError("reply frame is shorter than its length prefix")
    (head_len,) = _HEADER_LEN.unpack_from(frame)
    if head_len > MAX_HEADER_BYTES or _HEADER_LEN.size + head_len > len(frame):
        raise CodecError(f"reply frame header length {head_len} does not fit the frame")
    try:
        return _decode_result(frame, head_len)
    except CodecError:
        raise
    except Exception as error:  # a reader missed a case: still a bad frame, never a crash
        raise CodecError(f"reply frame could not be read ({type(error).__name__})") from error


def _decode_result(frame: bytes, head_len: int) -> JobResult:
    header = wire.mapping(
        wire.load_json(
            frame[_HEADER_LEN.size : _HEADER_LEN.size + head_len], what="reply header", max_bytes=head_len
        ),
        "reply header",
        max_items=32,
    )
    declared = header.get("blobs")
    if not isinstance(declared, list) or len(declared) > MAX_STEPS + 1:
        raise CodecError(f"reply blobs must be a list of at most {MAX_STEPS + 1} lengths")
    sizes = [wire.integer(n, "blob length", low=0, high=MAX_IMAGE_BYTES) for n in declared]
    offset = _HEADER_LEN.size + head_len
    if offset + sum(sizes) != len(frame):
        raise CodecError("reply frame blob lengths do not add up")
    blobs = []
    for size in sizes:
        blobs.append(frame[offset : offset + size])
        offset += size
    has_sr = wire.boolean(header.get("has_sr"), "has_sr")
    steps_declared = header.get("steps")
    step_count = (
        None if steps_declared is None else wire.integer(steps_declared, "steps", low=0, high=MAX_STEPS)
    )
    if len(blobs) != int(has_sr) + (step_count or 0):
        raise CodecError("reply frame blob count does not match its images")
    images = [_image(blob, _declared_shape(header.get("shape"))) for blob in blobs] if blobs else []
    timings = wire.mapping(header.get("timings") or {}, "timings", max_items=32)
    return JobResult(
        request_id=_request_id(header.get("rid")),
        ok=wire.boolean(header.get("ok"), "ok"),
        sr_rgb=images.pop(0) if has_sr else None,
        step_rgb=None if step_count is None else images,
        landmarks=_landmarks(header.get("landmarks")),
        landmark_status=_landmark_status(header.get("landmark_status")),
        model_id=wire.optional_text(header.get("model_id"), "model id", max_length=256),
        worker_id=wire.optional_text(header.get("worker_id"), "worker id", max_length=256),
        timings={
            wire.text(key, "timing name", max_length=64): wire.number(value, "timing", low=0.0, high=1e9)
            for key, value in timings.items()
        },
        error_kind=_error_kind(header.get("error_kind")),
        error_message=wire.optional_text(header.get("error_message"), "error message"),
    )


def encode_heartbeat(info: WorkerInfo) -> bytes:
    """A worker's heartbeat as stored under its key: JSON of :class:`WorkerInfo`."""
    return json.dumps(asdict(info), separators=(",", ":")).encode()


def decode_heartbeat(payload: object) -> WorkerInfo:
    """A heartbeat read back from Redis. Raises :class:`CodecError` and nothing else.

    Model cards are kept as JSON objects (they are shown by GET /v1/models), with their ``model_id``, when
    present, a string.
    """
    try:
        data = wire.mapping(
            wire.load_json(payload, what="heartbeat", max_bytes=MAX_HEARTBEAT_BYTES),
            "heartbeat",
            max_items=32,
        )
        models: dict[str, dict[str, Any]] = {}
        for model, card in wire.mapping(
            data.get("models") or {}, "heartbeat models", max_items=MAX_MODELS
        ).items():
            card = wire.mapping(card, "model card")
            wire.optional_text(card.get("model_id"), "model id", max_length=256)
            models[wire.name(model, "model name")] = card
        return WorkerInfo(
            worker_id=wire.name(data.get("worker_id"), "worker id"),
            ready=wire.boolean(data.get("ready"), "ready"),
            models=models,
            max_batch_size=wire.integer(data.get("max_batch_size", 1), "max_batch_size", low=1, high=1 << 20),
            runners=wire.integer(data.get("runners", 1), "runners", low=1, high=4096),
            throughput=wire.number(data.get("throughput", 0.0), "throughput", low=0.0, high=1e9),
            batches=wire.integer(data.get("batches", 0), "batches", low=0, high=1 << 62),
            inferences=wire.integer(data.get("inferences", 0), "inferences", low=0, high=1 << 62),
            started_at=wire.number(data.get("started_at", 0.0), "started_at", low=0.0, high=LATEST_TIME),
            host=wire.optional_text(data.get("host") or None, "host", max_length=256) or "",
            pid=wire.integer(data.get("pid", 0), "pid", low=0, high=1 << 31),
        )
    except CodecError:
        raise
    except Exception as error:  # a reader missed a case: still a bad heartbeat, never a crash
        raise CodecError(f"heartbeat could not be read ({type(error).__name__})") from error

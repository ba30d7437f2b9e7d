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
from typing import Any, Final, cast

import numpy as np

from facesr.model.landmark_quality import LANDMARK_STATUSES, LandmarkStatus
from facesr.service.queue.jobs import ERROR_KINDS, Job, JobOptions, JobResult

VERSION: Final = 1
_HEADER_LEN = struct.Struct(">I")
MAX_HEADER_BYTES: Final = 1 << 20
#: Largest image side a job or reply may declare (models take 16 px and give 128 px; far above both).
MAX_IMAGE_SIDE: Final = 4096


class CodecError(ValueError):
    """A stream entry or reply frame that cannot be decoded."""


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
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(side, int) and not isinstance(side, bool) for side in value)
        or not all(1 <= side <= MAX_IMAGE_SIDE for side in value)
    ):
        raise CodecError(f"image shape must be [H, W] with sides in 1..{MAX_IMAGE_SIDE}, got {value!r:.40}")
    return value[0], value[1]


def _image(data: bytes, shape: tuple[int, int]) -> np.ndarray:
    """Raw bytes -> a writable H x W x 3 uint8 array, when the length matches the shape."""
    height, width = shape
    if len(data) != height * width * 3:
        raise CodecError(
            f"image has {len(data)} bytes, expected {height * width * 3} for {height}x{width} RGB"
        )
    return np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3).copy()


def _field(fields: Mapping[Any, Any], name: str) -> bytes:
    value = fields.get(name.encode(), fields.get(name))
    if value is None:
        raise CodecError(f"job entry has no {name!r} field")
    return value if isinstance(value, bytes) else str(value).encode()


def peek_routing(fields: Mapping[Any, Any]) -> tuple[str | None, str | None]:
    """(request id, reply-to) of an entry, as far as they can be read, for error replies to bad entries."""
    out: list[str | None] = []
    for name in ("rid", "reply"):
        try:
            out.append(_field(fields, name).decode())
        except (CodecError, UnicodeDecodeError):
            out.append(None)
    return out[0], out[1]


def decode_job(fields: Mapping[Any, Any]) -> tuple[Job, str]:
    """(job, reply_to) from a stream entry's field map; the input's size is checked by the worker."""
    try:
        rid = _field(fields, "rid").decode()
        model = _field(fields, "model").decode()
        reply_to = _field(fields, "reply").decode()
        meta = json.loads(_field(fields, "meta"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CodecError(f"job entry is not valid UTF-8/JSON: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("v") != VERSION:
        raise CodecError(f"job entry has an unsupported metadata version: {meta!r:.80}")
    opts = meta.get("opts") or {}
    try:
        options = JobOptions(return_steps=bool(opts["return_steps"]), landmarks=bool(opts["landmarks"]))
        deadline = math.inf if meta["dl"] is None else _finite_time(meta["dl"], "deadline")
        job = Job(
            request_id=rid,
            model=model,
            lr_rgb=_image(_field(fields, "lr"), _declared_shape(meta.get("shape"))),
            options=options,
            enqueued_at=_finite_time(meta["enq"], "enqueue time"),
            deadline=deadline,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CodecError(f"job entry metadata is incomplete: {exc!r}") from exc
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


def _finite_time(value: Any, name: str) -> float:
    """A time read from the wire: a finite number (NaN would never expire; infinity is spelt null)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CodecError(f"job entry {name} must be a finite number, got {value!r:.40}")
    return float(value)


def decode_result(frame: bytes) -> JobResult:
    """Inverse of :func:`encode_result`; checks that the blob lengths add up."""
    if len(frame) < _HEADER_LEN.size:
        raise CodecError("reply frame is shorter than its length prefix")
    (head_len,) = _HEADER_LEN.unpack_from(frame)
    if head_len > MAX_HEADER_BYTES or _HEADER_LEN.size + head_len > len(frame):
        raise CodecError(f"reply frame header length {head_len} does not fit the frame")
    try:
        header = json.loads(frame[_HEADER_LEN.size : _HEADER_LEN.size + head_len])
        sizes = [int(n) for n in header["blobs"]]
        offset = _HEADER_LEN.size + head_len
        if offset + sum(sizes) != len(frame) or any(n < 0 for n in sizes):
            raise CodecError("reply frame blob lengths do not add up")
        blobs = []
        for n in sizes:
            blobs.append(frame[offset : offset + n])
            offset += n
        step_count = None if header["steps"] is None else int(header["steps"])
        if len(blobs) != int(bool(header["has_sr"])) + (step_count or 0):
            raise CodecError("reply frame blob count does not match its images")
        images = [_image(blob, _declared_shape(header["shape"])) for blob in blobs] if blobs else []
        sr = images.pop(0) if header["has_sr"] else None
        steps = None if step_count is None else images
        return JobResult(
            request_id=str(header["rid"]),
            ok=bool(header["ok"]),
            sr_rgb=sr,
            step_rgb=steps,
            landmarks=_landmarks(header["landmarks"]),
            landmark_status=_landmark_status(header.get("landmark_status")),
            model_id=header["model_id"],
            worker_id=header["worker_id"],
            timings={str(k): float(v) for k, v in (header["timings"] or {}).items()},
            error_kind=_error_kind(header["error_kind"]),
            error_message=header["error_message"],
        )
    except CodecError:
        raise
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError, IndexError) as exc:
        raise CodecError(f"malformed reply frame: {exc!r}") from exc

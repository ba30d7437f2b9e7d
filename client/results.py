"""Typed results of the facesr client (frozen dataclasses).

Images are `PIL.Image.Image` objects (decoded and loaded), points are read-only numpy arrays. Fields that
a server of an older version does not send are None (or empty), never missing.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from facesr.client.errors import ProblemError

__all__ = [
    "OUTPUT_SIZE",
    "BatchItem",
    "BatchResult",
    "Health",
    "InputRecord",
    "InputWarning",
    "LandmarkQuality",
    "ModelInfo",
    "Readiness",
    "SuperResolution",
]

#: Side of the service's output image, in pixels; landmarks are in these pixels.
OUTPUT_SIZE = 128


@dataclass(frozen=True)
class InputWarning:
    """A reason the result may be worse than the model can do for this upload.

    ``code`` is stable (``upscaled``, ``larger-than-output``, ``not-square``, or a newer one);
    ``message`` is for people.
    """

    code: str
    message: str


@dataclass(frozen=True)
class InputRecord:
    """What the upload was and what the service's input policy did to it.

    `format`, `width` and `height` describe the file as stored (before any EXIF orientation). The square
    ``(x, y, side)`` is the region of the upright upload that became the 16 x 16 model input: inside the
    image for ``fit="crop"``, reaching past its edges (negative x/y, or past the far edge) for
    ``fit="pad"``. Servers that predate the input policy send only format, width and height; the other
    fields are then None.

    Attributes:
        format: PNG, JPEG, WEBP or BMP.
        width, height: pixels as stored in the file.
        oriented: True when an EXIF orientation turned or flipped the image first.
        fit: ``"crop"`` or ``"pad"`` for a non-square upload; None when it was square (or not reported).
        x, y, side: the square used, in upright upload pixels.
        resized: True when the square was resized (PIL bicubic) to `resized_to`.
        resized_to: side of the model input (16).
        warnings: the `InputWarning`s of this upload (empty when none or not reported).
        transform: the ``X-Input-Transform`` header, one line such as
            ``"crop 0,500 2000x2000; resize 2000->16 bicubic"`` (single-image requests only).
        extra: members of the JSON ``input`` object this client version does not know.
    """

    format: str | None
    width: int | None
    height: int | None
    oriented: bool | None = None
    fit: str | None = None
    x: int | None = None
    y: int | None = None
    side: int | None = None
    resized: bool | None = None
    resized_to: int | None = None
    warnings: tuple[InputWarning, ...] = ()
    transform: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def region(self) -> tuple[int, int, int] | None:
        """``(x, y, side)`` of the square that became the model input, or None when not reported."""
        if self.x is None or self.y is None or self.side is None:
            return None
        return (self.x, self.y, self.side)

    def to_input(self, points: np.ndarray, output_size: int | tuple[int, int] = OUTPUT_SIZE) -> np.ndarray:
        """Map points from output pixels to pixels of the upright upload.

        Both are pixel-centre coordinates: pixel (i, j) covers [i, i + 1) x [j, j + 1) and its centre is
        (i, j), so output points lie in 0 <= x, y < `output_size`, -0.5 is the output's left/top edge
        and ``output_size - 0.5`` its right/bottom edge. The output's edges map onto the edges of the
        square ``(x, y, side)``, so that the output's centre maps onto the square's centre.

        Args:
            points: N x 2 array-like, (x, y) in output pixels.
            output_size: side of the output image the points refer to, or its (width, height); the
                response's (`SuperResolution.width`, `SuperResolution.height`).

        Returns:
            N x 2 float64 array, (x, y) in the upright upload's pixels:
            ``((px + 0.5) * side / width - 0.5 + x, (py + 0.5) * side / height - 0.5 + y)``. Points can
            fall outside the upload for ``fit="pad"``.

        Raises:
            ValueError: the record has no region (a server that predates the input policy), or
                `points` is not N x 2.
        """
        region = self.region
        if region is None:
            raise ValueError(
                "the service did not report the input region (x, y, side); it predates the input policy"
            )
        array = np.asarray(points, dtype=np.float64)
        if array.ndim != 2 or array.shape[1] != 2:
            raise ValueError(f"points must be N x 2 (x, y), got shape {array.shape}")
        width, height = (output_size, output_size) if isinstance(output_size, int) else output_size
        x, y, side = region
        scale = np.array([side / width, side / height], dtype=np.float64)
        return (array + 0.5) * scale - 0.5 + np.array([x, y], dtype=np.float64)


@dataclass(frozen=True)
class LandmarkQuality:
    """The serving model's landmark verdict from its model card.

    ``status`` is ``passed``, ``failed`` (then no landmarks are returned), ``unevaluated`` or ``absent``.
    """

    status: str
    message: str


@dataclass(frozen=True, eq=False)
class SuperResolution:
    """One super-resolved face.

    Attributes:
        image: the 128 x 128 RGB result (PIL image, decoded from `media_type`).
        landmarks: 68 x 2 float64 (x, y) in output pixels, pixel centres (0 <= x, y < 128; pixel (i, j)
            is the point (i, j)), iBUG 68-point order; None when not asked for, or when the model's
            landmarks failed evaluation (see `landmark_quality`). Read-only.
        confidences: 68 float64 in [0, 1], each point's heatmap peak (near 1: a clear peak); None with
            `landmarks`. Not a calibrated probability: compare points with it. Read-only.
        landmark_quality: the model's landmark verdict; None when landmarks were not asked for.
        model: name of the model that computed the face.
        model_id: model name plus a short hash of its weights.
        request_id: the service's id of this request (a batch item's is ``<batch id>.<index>``).
        media_type: encoding the image travelled in (``image/png``, ``image/jpeg`` or ``image/webp``).
        timings_ms: the service's phases in milliseconds (``decode``, ``queue``, ``compute``,
            ``encode``).
        batch_size: size of the model batch the face was computed in, if reported.
        steps: every feedback step's 128 x 128 image (the last is `image`) when asked for, else None.
        lr_image: with ``compare=True``, the 16 x 16 model input, else None.
        bicubic_image: with ``compare=True``, the model input enlarged to 128 x 128 with PIL bicubic
            (the baseline to compare against), else None.
        input: what the upload was and what was done to it.
        resized_from: (width, height) of the upright upload when it was not already 16 x 16, else None.
        width, height: the output's size in pixels as the response states it (128 x 128); the size of
            `image` for a server that does not state it.
    """

    image: Image.Image
    landmarks: np.ndarray | None
    confidences: np.ndarray | None
    landmark_quality: LandmarkQuality | None
    model: str
    model_id: str
    request_id: str
    media_type: str
    timings_ms: Mapping[str, float]
    batch_size: int | None
    steps: tuple[Image.Image, ...] | None
    lr_image: Image.Image | None
    bicubic_image: Image.Image | None
    input: InputRecord
    resized_from: tuple[int, int] | None = None
    width: int = OUTPUT_SIZE
    height: int = OUTPUT_SIZE

    @property
    def warnings(self) -> tuple[InputWarning, ...]:
        """The input's warnings (`input.warnings`)."""
        return self.input.warnings

    def landmarks_in_input(self) -> np.ndarray:
        """The landmarks in pixels of the upright upload: 68 x 2 float64, pixel centres as in `landmarks`
        (``(p + 0.5) * side / 128 - 0.5 + (x, y)`` for the input square ``(x, y, side)``; see
        `InputRecord.to_input`).

        Raises:
            ValueError: no landmarks in this result, or the service did not report the input region.
        """
        if self.landmarks is None:
            raise ValueError("this result has no landmarks (not asked for, or withheld by the service)")
        return self.input.to_input(self.landmarks, output_size=(self.width, self.height))


@dataclass(frozen=True, eq=False)
class BatchItem:
    """One image of a batch: exactly one of `result` and `error` is set.

    Attributes:
        index: position of the image in the request.
        filename: the file name sent for it.
        result: the face, when this image succeeded.
        error: the typed problem (`BadImageError`, ...), when it failed; ``status`` is the item's.
    """

    index: int
    filename: str | None
    result: SuperResolution | None = None
    error: ProblemError | None = None

    @property
    def ok(self) -> bool:
        return self.result is not None

    def unwrap(self) -> SuperResolution:
        """The result, or raise this item's error."""
        if self.result is None:
            assert self.error is not None
            raise self.error
        return self.result


@dataclass(frozen=True, eq=False)
class BatchResult:
    """The answer to a batch: one `BatchItem` per image, in request order.

    Iterating yields the items; ``len()`` is the number of images.
    """

    request_id: str
    items: tuple[BatchItem, ...]

    @property
    def succeeded(self) -> int:
        return sum(item.ok for item in self.items)

    @property
    def failed(self) -> int:
        return len(self.items) - self.succeeded

    @property
    def results(self) -> list[SuperResolution | ProblemError]:
        """Per image, its `SuperResolution` or its typed error."""
        outcomes: list[SuperResolution | ProblemError] = []
        for item in self.items:
            if item.result is not None:
                outcomes.append(item.result)
            else:
                assert item.error is not None
                outcomes.append(item.error)
        return outcomes

    def __iter__(self) -> Iterator[BatchItem]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> BatchItem:
        return self.items[index]


@dataclass(frozen=True)
class ModelInfo:
    """A model the service serves now.

    Attributes:
        name: what to pass as ``model=``.
        model_id: name plus a short hash of the weights, if reported.
        default: True for the model used when a request names none.
        card: the model card (config, parameters, training data, metrics, licence).
    """

    name: str
    model_id: str | None
    default: bool
    card: Mapping[str, Any]


@dataclass(frozen=True)
class Readiness:
    """The answer of ``GET /readyz``.

    ``ready`` is False (and `detail` says why) while no worker with a warmed model is available; the
    other fields are then their zero values.
    """

    ready: bool
    detail: str
    mode: str | None = None
    ready_workers: int = 0
    models: tuple[str, ...] = ()
    queue_depth: int = 0


@dataclass(frozen=True)
class Health:
    """The answer of ``GET /healthz``: the process answers (``status == "ok"``)."""

    status: str

    @property
    def ok(self) -> bool:
        return self.status == "ok"

"""Response bodies of the API (they also make the OpenAPI document at /docs)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from facesr.model.input_policy import Fit, WarningCode
from facesr.model.landmark_quality import LandmarkStatus


class InputWarningInfo(BaseModel):
    """Why the result may be worse than the model can do for this upload."""

    code: WarningCode
    message: str


class InputInfo(BaseModel):
    """What the upload was and what the input policy did to it (see docs/input-policy.md).

    `x`, `y` and `side` give the square that became the 16 x 16 model input, in the upright upload's
    pixels: inside it for a crop, reaching past its edges for a pad. Landmarks are pixel centres: output
    pixel (lx, ly) lies at (x + (lx + 0.5) * side / 128 - 0.5, y + (ly + 0.5) * side / 128 - 0.5) in
    the upright upload.
    """

    format: str = Field(description="PNG, JPEG, WEBP or BMP.")
    width: int = Field(description="Width of the upright upload (after EXIF orientation).")
    height: int = Field(description="Height of the upright upload (after EXIF orientation).")
    oriented: bool = Field(description="True when an EXIF orientation turned or flipped the image first.")
    fit: Fit | None = Field(
        description="How a non-square upload was made square; null when it was square already."
    )
    x: int = Field(description="Left edge of the square used, upright upload pixels (negative: padded).")
    y: int = Field(description="Top edge of the square used, upright upload pixels (negative: padded).")
    side: int = Field(description="Side of the square used, upright upload pixels.")
    resized: bool = Field(description="True when the square was resized (PIL bicubic) to `resized_to`.")
    resized_to: int = Field(description="Side of the model input (16).")
    warnings: list[InputWarningInfo] = Field(
        description="Each reason the result is worse than the model can do; also in `X-Input-Warnings`."
    )


class LandmarkPoint(BaseModel):
    """One landmark of the output image and how sure the model is of it."""

    x: float = Field(description="Output pixels, 0 <= x < 128.")
    y: float = Field(description="Output pixels, 0 <= y < 128.")
    confidence: float = Field(
        ge=0, le=1, description="The point's heatmap peak: near 1 is a clear peak, near 0 a guess."
    )


class LandmarkQualityInfo(BaseModel):
    """Whether the serving model's landmarks can be trusted (from its model card)."""

    status: LandmarkStatus
    message: str


class SuperResolved(BaseModel):
    """One super-resolved face (the JSON representation of POST /v1/super-resolve)."""

    request_id: str
    model: str = Field(description="Model name the request was served by.")
    model_id: str = Field(description="Model name plus a short hash of its weights.")
    media_type: str = Field(description="Media type of `image` once base64-decoded.")
    width: int = 128
    height: int = 128
    image: str = Field(description="The 128 x 128 RGB result, base64-encoded in `media_type`.")
    landmarks: list[LandmarkPoint] | None = Field(
        None,
        description="68 iBUG points in output pixels with a confidence each; null when not asked, or "
        "when the model's landmarks failed evaluation (then `landmark_quality` says so).",
    )
    landmark_quality: LandmarkQualityInfo | None = Field(
        None, description="The model's landmark verdict; present whenever landmarks were asked for."
    )
    steps: list[str] | None = Field(
        None,
        description="Each feedback step's image (base64, same encoding), the last is `image`; "
        "null when not asked.",
    )
    resized_from: tuple[int, int] | None = Field(
        None,
        description="(width, height) of the upright upload when it was not already 16 x 16 (see `input`).",
    )
    input: InputInfo
    lr_image: str | None = Field(
        None, description="With `compare`: the 16 x 16 model input, base64 PNG; else null."
    )
    bicubic_image: str | None = Field(
        None,
        description="With `compare`: the model input enlarged to 128 x 128 with PIL bicubic (the "
        "baseline), base64 in `media_type`; else null.",
    )
    batch_size: int | None = Field(None, description="Size of the model batch this face was computed in.")
    timings_ms: dict[str, float] = Field(description="Phases: decode, queue, compute, encode (milliseconds).")


class ItemProblem(BaseModel):
    """RFC 9457 problem details of one batch item."""

    type: str = Field(description="urn:facesr:problem:<slug>, see docs/service.md.")
    title: str
    status: int
    detail: str


class ProblemDocument(ItemProblem):
    """RFC 9457 problem details (media type application/problem+json)."""

    instance: str | None = None
    request_id: str | None = None


class BatchItem(BaseModel):
    """One entry of a batch response: either `result` or `error` is set."""

    index: int = Field(description="Position of the image in the request.")
    filename: str | None = None
    ok: bool
    result: SuperResolved | None = None
    error: ItemProblem | None = None


class BatchResponse(BaseModel):
    request_id: str
    succeeded: int
    failed: int
    items: list[BatchItem]


class ServedModel(BaseModel):
    name: str
    model_id: str | None
    default: bool = Field(description="True for the model used when a request names none.")
    card: dict[str, Any] = Field(
        description="The model card: config, parameters, training data, metrics, licence."
    )


class ModelList(BaseModel):
    models: list[ServedModel]


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    ready: bool
    mode: Literal["embedded", "redis"]
    ready_workers: int
    models: list[str]
    queue_depth: int
    detail: str


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries documenting problem+json answers for the given statuses."""
    schema = ProblemDocument.model_json_schema()
    return {
        status: {
            "description": "A problem (RFC 9457)",
            "content": {"application/problem+json": {"schema": schema}},
        }
        for status in statuses
    }

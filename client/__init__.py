"""Python client of the facesr service: small faces in, 128 x 128 faces and 68 landmarks out.

    from facesr.client import Client

    with Client("http://127.0.0.1:8000") as client:
        face = client.super_resolve("face.jpg")
        face.image.save("face-128.png")      # PIL image, 128 x 128 RGB
        print(face.landmarks.shape)          # (68, 2), x and y in output pixels

`AsyncClient` has the same methods, awaited. Both send ``X-Deadline-Ms`` for a `deadline_ms`, retry
429 and 503 answers after their ``Retry-After`` (and connection failures) a bounded number of times, and
raise typed errors built from the service's problem documents (`facesr.client.errors`).

Needs only httpx, numpy and Pillow (no torch, no FastAPI).
"""

from facesr.client._async import AsyncClient
from facesr.client._images import ImageInput
from facesr.client._sync import Client
from facesr.client.errors import (
    BadImageError,
    BadRequestError,
    DeadlineExceededError,
    FaceSRClientError,
    FaceSRConnectionError,
    FaceSRTimeoutError,
    ImageTooLargeError,
    InputTooSmallError,
    InvalidOptionsError,
    NotAcceptableError,
    NotFoundError,
    PayloadTooLargeError,
    ProblemError,
    QueueFullError,
    RequestError,
    ServerError,
    ServiceUnavailableError,
    UnauthorizedError,
    UndecodableImageError,
    UnexpectedResponseError,
    UnknownModelError,
    UnsupportedMediaTypeError,
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

__all__ = [
    "AsyncClient",
    "BadImageError",
    "BadRequestError",
    "BatchItem",
    "BatchResult",
    "Client",
    "DeadlineExceededError",
    "FaceSRClientError",
    "FaceSRConnectionError",
    "FaceSRTimeoutError",
    "Health",
    "ImageInput",
    "ImageTooLargeError",
    "InputRecord",
    "InputTooSmallError",
    "InputWarning",
    "InvalidOptionsError",
    "LandmarkQuality",
    "ModelInfo",
    "NotAcceptableError",
    "NotFoundError",
    "PayloadTooLargeError",
    "ProblemError",
    "QueueFullError",
    "Readiness",
    "RequestError",
    "ServerError",
    "ServiceUnavailableError",
    "SuperResolution",
    "UnauthorizedError",
    "UndecodableImageError",
    "UnexpectedResponseError",
    "UnknownModelError",
    "UnsupportedMediaTypeError",
]

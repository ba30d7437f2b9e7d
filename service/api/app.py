"""The FastAPI application: routers, middleware, the one error handler, and the backend's lifetime.

`create_app(settings, backend)` is what tests and `facesr serve` use; `create_app_from_environment`
is the factory uvicorn imports in every process when `facesr serve --workers N` runs several.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from facesr.service import metrics
from facesr.service.api.backends import build_backend
from facesr.service.api.guards import API_KEY_HEADER, PROTECTED_PREFIX, HeaderGuardMiddleware
from facesr.service.api.middleware import RequestContextMiddleware
from facesr.service.api.routes import demo, docs, health, inference, models
from facesr.service.api.routes import metrics as metrics_route
from facesr.service.api.state import ServiceState
from facesr.service.errors import install_error_handlers
from facesr.service.queue.base import QueueBackend
from facesr.service.settings import ServiceSettings
from facesr.service.version import __version__

logger = logging.getLogger("facesr.service")

# Room for the multipart envelope around each file (boundaries, part headers, option fields).
MULTIPART_OVERHEAD_BYTES = 16 * 1024

DESCRIPTION = """\
Face super-resolution (DIC): a 16x16 face in, a 128x128 face and its 68 landmarks out.

Uploads of at least 8x8 pixels are made square without distortion (centre crop, or `fit=pad`) and
resized to 16x16 with PIL bicubic, as the model was trained; every response says what was done
(`input` in JSON, `X-Input-Transform`), and warns when the result will be worse than the model can do
(`input.warnings`, `X-Input-Warnings`).
Errors are `application/problem+json` (RFC 9457). Send `X-Deadline-Ms` to bound the wait.
"""


def body_limits(settings: ServiceSettings) -> dict[str, int]:
    """Largest accepted request body per upload route, enforced while the body is received."""
    per_file = settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES
    return {inference.SINGLE_PATH: per_file, inference.BATCH_PATH: per_file * settings.max_batch_images}


def create_app(settings: ServiceSettings, backend: QueueBackend | None = None) -> FastAPI:
    """Build the API.

    Args:
        settings: validated configuration.
        backend: the queue to submit to; None builds it from the settings (Redis when
            FACESR_REDIS_URL is set, else the embedded queue with the configured checkpoints,
            which are loaded here so a missing checkpoint fails before the server listens).
    """
    queue = backend if backend is not None else build_backend(settings)
    service = ServiceState(settings=settings, backend=queue)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # A killed sibling never ran the `mark_process_dead` below; its replacement clears its gauges.
        metrics.mark_dead_processes()
        await queue.start()
        logger.info("facesr API up (%s mode)", "embedded" if settings.embedded else "redis")
        try:
            yield
        finally:
            await queue.close()
            metrics.mark_process_dead(os.getpid())

    app = FastAPI(
        title="facesr",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        # /docs and /redoc are added by `docs.install_docs`, with assets served here instead of a CDN.
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service
    install_error_handlers(app)
    limits = body_limits(settings)
    app.include_router(inference.single_router, max_body_size=limits[inference.SINGLE_PATH])
    app.include_router(inference.batch_router, max_body_size=limits[inference.BATCH_PATH])
    app.include_router(models.router)
    app.include_router(health.router)
    app.include_router(metrics_route.router)
    docs.install_docs(app)
    if settings.demo_page:
        demo.install_demo(app)
    # Starlette runs the last added middleware first: the request context wraps the guard, so even the
    # guard's refusals carry a request id, are counted, and pass through the one error handler.
    app.add_middleware(HeaderGuardMiddleware, api_keys=settings.api_keys, body_limits=limits)
    app.add_middleware(RequestContextMiddleware)
    if settings.auth_enabled:
        _document_api_key(app)
    return app


def _document_api_key(app: FastAPI) -> None:
    """Declare the API-key schemes in the OpenAPI document (the check itself is `HeaderGuardMiddleware`)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            schema.setdefault("components", {})["securitySchemes"] = {
                "apiKeyHeader": {"type": "apiKey", "in": "header", "name": API_KEY_HEADER},
                "bearer": {"type": "http", "scheme": "bearer"},
            }
            for path, operations in schema.get("paths", {}).items():
                if path.startswith(PROTECTED_PREFIX):
                    for operation in operations.values():
                        operation["security"] = [{"apiKeyHeader": []}, {"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app_from_environment() -> FastAPI:
    """uvicorn factory (`facesr.service.api.app:create_app_from_environment`): settings from FACESR_*."""
    return create_app(ServiceSettings())

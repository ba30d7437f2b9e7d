"""GET /metrics: Prometheus text format (all processes aggregated in multiprocess mode).

The API's own metrics; in the embedded mode also the in-process worker's.
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from facesr.service import metrics
from facesr.service.api.deps import Service

router = APIRouter(tags=["health"])


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def prometheus_metrics(service: Service) -> Response:
    """Refreshes `facesr_queue_depth` from the backend first, so every scrape sees the current depth."""
    status = await service.status.get()
    if status.reachable:
        metrics.QUEUE_DEPTH.set(status.depth)
    # In Redis mode the workers are other scrape targets: their families here would only be zeros.
    body, content_type = metrics.render_latest("all" if service.settings.embedded else "api")
    return Response(body, media_type=content_type)

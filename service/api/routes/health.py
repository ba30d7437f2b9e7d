"""GET /healthz (the process answers) and GET /readyz (it can serve a face now)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from facesr.service import metrics
from facesr.service.api.deps import Service
from facesr.service.api.schemas import Health, Readiness, problem_responses
from facesr.service.errors import ServiceNotReadyError, problem_for, problem_response

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process is up", response_model=Health)
async def healthz() -> Health:
    return Health()


@router.get(
    "/readyz",
    summary="Readiness: queue reachable, a worker with a fresh heartbeat and a warmed model",
    response_model=Readiness,
    responses=problem_responses(503),
)
async def readyz(request: Request, service: Service) -> Readiness | JSONResponse:
    """503 (problem+json) until ready; not counted as a rejection, since probes poll it while starting."""
    status = await service.status.get(fresh=True)
    if status.reachable:
        metrics.QUEUE_DEPTH.set(status.depth)
    reason = None
    if not status.reachable:
        reason = f"the job queue is unreachable: {status.detail}"
    elif status.ready_workers < 1 or not status.models:
        reason = f"no worker with a warmed model is ready ({status.detail or 'none seen'})"
    if reason is not None:
        problem = problem_for(ServiceNotReadyError(reason))
        return problem_response(problem, instance=request.url.path, request_id=request.state.request_id)
    return Readiness(
        ready=True,
        mode="embedded" if service.settings.embedded else "redis",
        ready_workers=status.ready_workers,
        models=sorted(status.models),
        queue_depth=status.depth,
        detail=status.detail,
    )

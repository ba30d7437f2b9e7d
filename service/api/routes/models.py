"""GET /v1/models: the models the workers serve, each with its model card."""

from __future__ import annotations

from fastapi import APIRouter

from facesr.service.api.deps import Service
from facesr.service.api.schemas import ModelList, ServedModel, problem_responses
from facesr.service.errors import ServiceNotReadyError

router = APIRouter(tags=["models"])


@router.get(
    "/v1/models",
    summary="Models served right now, with their cards",
    response_model=ModelList,
    responses=problem_responses(401, 503),
)
async def list_models(service: Service) -> ModelList:
    """Cards come from the ready workers' heartbeats (embedded mode: from the loaded checkpoints)."""
    status = await service.status.get()
    if not status.reachable:
        raise ServiceNotReadyError(f"the job queue is unreachable: {status.detail}")
    default = service.settings.default_model or (next(iter(status.models)) if len(status.models) == 1 else "")
    models = []
    for name in sorted(status.models):
        card = dict(status.models[name])
        model_id = card.pop("model_id", None)
        models.append(ServedModel(name=name, model_id=model_id, default=name == default, card=card))
    return ModelList(models=models)

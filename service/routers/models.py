"""What is being served: each model's manifest, whether it is a demo model, and what it scored."""

from fastapi import APIRouter

from service.dependencies import StateDep
from service.errors import NOT_READY_ERROR
from service.schemas import ModelInfo, ModelsResponse, ServingInfo

router = APIRouter(tags=["models"])


@router.get(
    "/models",
    response_model=ModelsResponse,
    responses=NOT_READY_ERROR,
    summary="The served models",
    description="Each served model's name, weights' hash, manifest (classes, architecture, preprocessing, "
    "provenance, measured metrics) and whether it is a demo model; and the batching settings. Open without "
    "an API key.",
)
async def list_models(state: StateDep) -> ModelsResponse:
    settings = state.settings
    return ModelsResponse(
        models=[ModelInfo(**served.describe()) for served in state.models.values()],
        serving=ServingInfo(
            device=str(state.device),
            max_batch=settings.max_batch,
            max_batch_wait_ms=settings.max_batch_wait_ms,
            max_queue=settings.max_queue,
        ),
    )

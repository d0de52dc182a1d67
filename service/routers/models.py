"""What is being served (each model's manifest, version, whether it is a demo, what it scored) and reloading one."""

from fastapi import APIRouter, Depends, HTTPException

from service.dependencies import StateDep
from service.errors import NOT_READY_ERROR, RELOAD_ERRORS, UNKNOWN_MODEL_ERROR
from service.registry import ModelSlot, ReloadFailed, UnknownModel
from service.schemas import ModelInfo, ModelsResponse, ReloadResponse, ServingInfo
from service.security import KeyCheckedRoute, api_key_schemes
from service.state import ServiceState

router = APIRouter(tags=["models"])
# The reload route alone needs the API key (when one is set); listing stays open like health and metrics.
reload_router = APIRouter(tags=["models"], dependencies=[Depends(api_key_schemes)], route_class=KeyCheckedRoute)


def _info(slot: ModelSlot) -> ModelInfo:
    return ModelInfo(**slot.served.describe(), default=slot.default, last_reload_error=slot.last_reload_error)


def _slot(state: ServiceState, name: str) -> ModelSlot:
    try:
        return state.registry.slot(name)
    except UnknownModel as error:
        raise HTTPException(status_code=404, detail=str(error)) from None


@router.get("/models", response_model=ModelsResponse, responses=NOT_READY_ERROR, summary="The served models")
async def list_models(state: StateDep) -> ModelsResponse:
    settings = state.settings
    return ModelsResponse(
        models=[_info(slot) for slot in state.registry.slots.values()],
        serving=ServingInfo(
            device=str(state.device),
            max_batch=settings.max_batch,
            max_batch_wait_ms=settings.max_batch_wait_ms,
            max_queue=settings.max_queue,
        ),
    )


@router.get(
    "/models/{name}",
    response_model=ModelInfo,
    responses={**NOT_READY_ERROR, **UNKNOWN_MODEL_ERROR},
    summary="One served model",
)
async def get_model(name: str, state: StateDep) -> ModelInfo:
    return _info(_slot(state, name))


@reload_router.post(
    "/models/{name}/reload",
    response_model=ReloadResponse,
    responses={**NOT_READY_ERROR, **UNKNOWN_MODEL_ERROR, **RELOAD_ERRORS},
    summary="Load the model's checkpoint file again beside the serving version, warm it up, then swap",
)
async def reload_model(name: str, state: StateDep) -> ReloadResponse:
    _slot(state, name)
    try:
        outcome = await state.registry.reload(name)
    except ReloadFailed as error:
        raise HTTPException(status_code=422, detail=str(error)) from None
    return ReloadResponse(name=outcome.name, version=outcome.version, previous_version=outcome.previous_version)


router.include_router(reload_router)

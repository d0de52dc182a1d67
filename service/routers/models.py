"""What is being served (each model's manifest, version, whether it is a demo, what it scored) and reloading one."""

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path

from service.dependencies import StateDep
from service.errors import MALFORMED_REQUEST_ERROR, NOT_READY_ERROR, RELOAD_ERRORS, UNKNOWN_MODEL_ERROR
from service.registry import ModelSlot, ReloadFailed, UnknownModel
from service.schemas import ModelInfo, ModelsResponse, ReloadResponse, ServingInfo
from service.security import KeyCheckedRoute, api_key_schemes
from service.state import ServiceState

router = APIRouter(tags=["models"])
# The reload route alone needs the API key (when one is set); listing stays open like health and metrics.
reload_router = APIRouter(tags=["models"], dependencies=[Depends(api_key_schemes)], route_class=KeyCheckedRoute)


ModelName = Annotated[str, Path(description="The model's served name, as GET /models lists it.")]


def _info(slot: ModelSlot) -> ModelInfo:
    return ModelInfo(**slot.served.describe(), default=slot.default, last_reload_error=slot.last_reload_error)


def _slot(state: ServiceState, name: str) -> ModelSlot:
    try:
        return state.registry.slot(name)
    except UnknownModel as error:
        raise HTTPException(status_code=404, detail=str(error)) from None


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
    responses={**NOT_READY_ERROR, **UNKNOWN_MODEL_ERROR, **MALFORMED_REQUEST_ERROR},
    summary="One served model",
    description="What GET /models says of one model, with `last_reload_error` when its last reload failed. "
    "An unknown name is a 404 listing the served ones. Open without an API key.",
)
async def get_model(name: ModelName, state: StateDep) -> ModelInfo:
    return _info(_slot(state, name))


@reload_router.post(
    "/models/{name}/reload",
    response_model=ReloadResponse,
    responses={**NOT_READY_ERROR, **UNKNOWN_MODEL_ERROR, **RELOAD_ERRORS},
    summary="Load the model's checkpoint file again beside the serving version, warm it up, then swap",
    description="Requests already holding the old version finish on it; its engine stops after the last. A file "
    "that does not load or warm up leaves the old version serving: 422 saying why, also kept in the model's "
    "`last_reload_error`. Needs the API key when API_KEY is set.",
)
async def reload_model(name: ModelName, state: StateDep) -> ReloadResponse:
    _slot(state, name)
    try:
        outcome = await state.registry.reload(name)
    except ReloadFailed as error:
        raise HTTPException(status_code=422, detail=str(error)) from None
    return ReloadResponse(name=outcome.name, version=outcome.version, previous_version=outcome.previous_version)


router.include_router(reload_router)

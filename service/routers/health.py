"""Liveness and readiness: both open without an API key, for orchestrators."""

from fastapi import APIRouter

from service.dependencies import StateDep
from service.errors import NOT_READY_ERROR, ServiceUnavailable
from service.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get(
    "/healthz",
    response_model=Health,
    summary="The process is alive and answering",
    description="Liveness for orchestrators: 200 as long as the process answers, models loaded or not. Open "
    "without an API key.",
)
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    responses=NOT_READY_ERROR,
    summary="Models loaded and warmed up",
    description="Readiness: 200 once every configured model is loaded and has run once; 503 with Retry-After "
    "while warming up (the detail says what runs now: a first start's export, a runtime's compile, the warm-up "
    "batch), 503 without it when warm-up failed. Open without an API key.",
)
async def readyz(state: StateDep) -> Readiness:
    if state.warmup_error is not None:
        raise ServiceUnavailable(state.warmup_error, retry=False)
    if not state.ready:
        raise ServiceUnavailable(f"models are warming up{f': {state.warming}' if state.warming else ''}", retry=True)
    return Readiness(status="ready", models=state.registry.roles())

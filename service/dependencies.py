"""Typed dependencies the routers declare: settings, service state, and each served model when ready."""

from typing import Annotated

from fastapi import Depends, Request

from service.errors import ServiceUnavailable
from service.loading import ServedModel
from service.settings import Settings, get_settings
from service.state import ServiceState

SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_state(request: Request) -> ServiceState:
    state = getattr(request.app.state, "service", None)
    if state is None:  # the lifespan has not run (an app served without it)
        raise ServiceUnavailable("models are not loaded", retry=True)
    return state


StateDep = Annotated[ServiceState, Depends(get_state)]


def _ready_model(state: ServiceState, role: str, setting: str) -> ServedModel:
    if role not in state.models:
        raise ServiceUnavailable(f"no {role} is configured on this server (set {setting})", retry=False)
    if state.warmup_error is not None:
        raise ServiceUnavailable(state.warmup_error, retry=False)
    if not state.ready:
        raise ServiceUnavailable("models are warming up", retry=True)
    return state.models[role]


def get_detector(state: StateDep) -> ServedModel:
    return _ready_model(state, "detector", "DETECTOR_CHECKPOINT")


def get_classifier(state: StateDep) -> ServedModel:
    return _ready_model(state, "classifier", "CLASSIFIER_CHECKPOINT")


DetectorDep = Annotated[ServedModel, Depends(get_detector)]
ClassifierDep = Annotated[ServedModel, Depends(get_classifier)]

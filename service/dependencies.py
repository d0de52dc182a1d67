"""Typed dependencies the routers declare: settings, service state, each served model when ready, and the
check that a request names only query parameters its route takes."""

from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

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


def _query_names(dependant: Dependant) -> set[str]:
    names = {parameter.alias for parameter in dependant.query_params}
    for dependency in dependant.dependencies:
        names |= _query_names(dependency)
    return names


def reject_unknown_query(request: Request) -> None:
    """422 naming a query parameter the route does not take (a typo like `score=0.3` would else be ignored)."""
    route: APIRoute = request.scope["route"]
    allowed = _query_names(route.dependant)  # a walk of a few nodes; routes are unhashable, so not cached
    unknown = sorted(set(request.query_params) - allowed)
    if unknown:
        names = ", ".join(map(repr, unknown))
        raise HTTPException(
            422,
            f"unknown query parameter{'s' if len(unknown) > 1 else ''} {names}; "
            f"{request.url.path} takes: {', '.join(sorted(allowed)) or 'none'}",
        )

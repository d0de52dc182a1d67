"""Typed dependencies the routers declare: settings, service state, the served model a request picked, and
the check that a request names only query parameters its route takes."""

import types
import typing
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from service.errors import ServiceUnavailable
from service.loading import ServedModel
from service.registry import UnknownModel
from service.settings import Settings, resolve_settings
from service.state import ServiceState


def get_request_settings(request: Request) -> Settings:
    """The settings of the app serving this request (kept on `app.state` by `create_app`)."""
    return resolve_settings(request.app)


SettingsDep = Annotated[Settings, Depends(get_request_settings)]


def get_state(request: Request) -> ServiceState:
    state = getattr(request.app.state, "service", None)
    if state is None:  # the lifespan has not run (an app served without it)
        raise ServiceUnavailable("models are not loaded", retry=True)
    return state


StateDep = Annotated[ServiceState, Depends(get_state)]

ModelChoice = Annotated[
    str | None,
    Query(description="Name of the model to use (GET /models lists them); absent: the default of this kind."),
]


def _ready_model(state: ServiceState, role: str, name: str | None) -> ServedModel:
    if state.registry.default(role) is None:
        raise ServiceUnavailable(
            f"no {role} is configured on this server (set {role.upper()}_CHECKPOINT or MODELS_DIR)", retry=False
        )
    if state.warmup_error is not None:
        raise ServiceUnavailable(state.warmup_error, retry=False)
    if not state.ready:
        raise ServiceUnavailable("models are warming up", retry=True)
    try:
        return state.registry.select(role=role, name=name)
    except UnknownModel as error:
        raise HTTPException(status_code=404, detail=str(error)) from None


# The model is held until the answer is made: a reload that swaps it meanwhile stops its engine only afterwards.
# Picking and holding happen with no await in between, so a swap cannot fall between them.


async def get_detector(state: StateDep, model: ModelChoice = None) -> AsyncIterator[ServedModel]:
    async with _ready_model(state, "detector", model).in_use() as served:
        yield served


async def get_classifier(state: StateDep, model: ModelChoice = None) -> AsyncIterator[ServedModel]:
    async with _ready_model(state, "classifier", model).in_use() as served:
        yield served


DetectorDep = Annotated[ServedModel, Depends(get_detector)]
ClassifierDep = Annotated[ServedModel, Depends(get_classifier)]


def _takes_a_list(annotation: object) -> bool:
    """`list[str]` or `list[str] | None`: a parameter that may be repeated."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_takes_a_list(member) for member in typing.get_args(annotation))
    return typing.get_origin(annotation) in (list, tuple, set, frozenset)


def _query_names(dependant: Dependant) -> dict[str, bool]:
    """Each query parameter the route takes, and whether it may be repeated."""
    names = {parameter.alias: _takes_a_list(parameter.field_info.annotation) for parameter in dependant.query_params}
    for dependency in dependant.dependencies:
        names |= _query_names(dependency)
    return names


def reject_unknown_query(request: Request) -> None:
    """422 naming a query parameter the route does not take (a typo like `score=0.3` would else be ignored), or
    one given twice that takes one value (`max_detections=5&max_detections=500`: which did the client mean?)."""
    route: APIRoute = request.scope["route"]
    allowed = _query_names(route.dependant)  # a walk of a few nodes; routes are unhashable, so not cached
    unknown = sorted(set(request.query_params) - set(allowed))
    if unknown:
        names = ", ".join(map(repr, unknown))
        raise HTTPException(
            422,
            f"unknown query parameter{'s' if len(unknown) > 1 else ''} {names}; "
            f"{request.url.path} takes: {', '.join(sorted(allowed)) or 'none'}",
        )
    repeated = sorted(
        name for name, many in allowed.items() if not many and len(request.query_params.getlist(name)) > 1
    )
    if repeated:
        raise HTTPException(
            422, f"query parameter {', '.join(map(repr, repeated))} given more than once; it takes one value"
        )

"""Optional API key: with API_KEY set, inference routes need `Authorization: Bearer KEY` or `X-API-Key: KEY`."""

import secrets
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, Response
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from service.settings import Settings, get_settings, resolve_settings

bearer = HTTPBearer(auto_error=False, description="API_KEY as a bearer token.")
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="API_KEY in a header.")


def check_api_key(settings: Settings, *, bearer_key: str | None, header_key: str | None) -> None:
    """Raise 401 unless API_KEY is unset or one of the offered keys is it."""
    if settings.api_key is None:
        return
    offered = [key for key in (bearer_key, header_key) if key]
    # compare_digest: the time taken does not reveal how much of the key matched
    if not any(secrets.compare_digest(key.encode(), settings.api_key.encode()) for key in offered):
        raise HTTPException(
            status_code=401,
            detail="missing or wrong API key (send `Authorization: Bearer <key>` or `X-API-Key: <key>`)",
            headers={"WWW-Authenticate": "Bearer"},
        )


def require_api_key(
    settings: Annotated[Settings, Depends(get_settings)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    header_key: Annotated[str | None, Depends(api_key_header)],
) -> None:
    """The router dependency: declares the two security schemes in OpenAPI and checks them."""
    check_api_key(settings, bearer_key=credentials.credentials if credentials else None, header_key=header_key)


class KeyCheckedRoute(APIRoute):
    """Checks the API key from the headers before FastAPI reads the body.

    Why: FastAPI parses a multipart body (spooling uploads to disk) before it solves any dependency, so
    `require_api_key` alone answers 401 only after a stranger's upload has been received and parsed.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def key_checked_handler(request: Request) -> Response:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            check_api_key(
                resolve_settings(request.app),
                bearer_key=token.strip() if scheme.lower() == "bearer" else None,
                header_key=request.headers.get("x-api-key"),
            )
            return await handler(request)

        return key_checked_handler

"""Optional API key: with API_KEY set, inference routes need `Authorization: Bearer KEY` or `X-API-Key: KEY`.

`KeyCheckedRoute` checks the key before FastAPI reads the request body: FastAPI parses a multipart body
(spooling uploads to disk) before it solves any dependency, so a dependency alone would answer a
stranger's 401 only after receiving and parsing the upload. `api_key_schemes` only declares the two
schemes in OpenAPI (/docs shows them); the check is the route's.
"""

import secrets
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, Response
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from service.settings import resolve_settings

bearer = HTTPBearer(auto_error=False, description="API_KEY as a bearer token.")
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="API_KEY in a header.")


def api_key_schemes(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    header_key: Annotated[str | None, Depends(api_key_header)],
) -> None:
    """The routers' dependency: puts both schemes in the OpenAPI document. KeyCheckedRoute checks them."""


class KeyCheckedRoute(APIRoute):
    """A route that answers 401 from the headers alone, before its body is read, when API_KEY is set."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def key_checked_handler(request: Request) -> Response:
            expected = resolve_settings(request.app).api_key
            if expected is not None:
                credentials, header_key = await bearer(request), await api_key_header(request)
                offered = [key for key in (credentials and credentials.credentials, header_key) if key]
                # compare_digest: the time taken does not reveal how much of the key matched
                if not any(secrets.compare_digest(key.encode(), expected.encode()) for key in offered):
                    raise HTTPException(
                        status_code=401,
                        detail="missing or wrong API key (send `Authorization: Bearer <key>` or `X-API-Key: <key>`)",
                        headers={"WWW-Authenticate": "Bearer"},
                    )
            return await handler(request)

        return key_checked_handler

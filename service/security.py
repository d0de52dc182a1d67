"""Optional API key: with API_KEY set, inference routes need `Authorization: Bearer KEY` or `X-API-Key: KEY`."""

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from service.settings import Settings, get_settings

bearer = HTTPBearer(auto_error=False, description="API_KEY as a bearer token.")
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="API_KEY in a header.")


def require_api_key(
    settings: Annotated[Settings, Depends(get_settings)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    header_key: Annotated[str | None, Depends(api_key_header)],
) -> None:
    if settings.api_key is None:
        return
    offered = [key for key in (credentials.credentials if credentials else None, header_key) if key]
    # compare_digest: the time taken does not reveal how much of the key matched
    if not any(secrets.compare_digest(key.encode(), settings.api_key.encode()) for key in offered):
        raise HTTPException(
            status_code=401,
            detail="missing or wrong API key (send `Authorization: Bearer <key>` or `X-API-Key: <key>`)",
            headers={"WWW-Authenticate": "Bearer"},
        )

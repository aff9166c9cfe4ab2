"""FastAPI dependencies, named once.

All `async def`: FastAPI runs a plain `def` dependency in its thread pool, a thread hop per
request for what is an attribute lookup.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.api.errors import ApiError
from app.service.admin import AdminService
from app.service.catalog import CatalogService
from app.service.readiness import ReadinessService
from app.service.retrieval import RetrievalService
from app.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="RR_ADMIN_TOKEN")
_search_bearer = HTTPBearer(
    auto_error=False, scheme_name="SearchKey", description="one of RR_API_KEYS (when set)"
)


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_retrieval(request: Request) -> RetrievalService:
    return request.app.state.retrieval


async def get_admin(request: Request) -> AdminService:
    return request.app.state.admin


async def get_catalog(request: Request) -> CatalogService:
    return request.app.state.catalog


async def get_readiness(request: Request) -> ReadinessService | None:
    """None while the service is still starting."""
    return getattr(request.app.state, "readiness", None)


SettingsDep = Annotated[Settings, Depends(get_settings)]
CatalogDep = Annotated[CatalogService, Depends(get_catalog)]
ReadinessDep = Annotated[ReadinessService | None, Depends(get_readiness)]
RetrievalDep = Annotated[RetrievalService, Depends(get_retrieval)]
AdminDep = Annotated[AdminService, Depends(get_admin)]


async def require_admin(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Router-level guard for every admin route (constant-time token compare)."""
    if settings.admin_token is None:
        raise ApiError(503, "admin_disabled", "admin disabled: set RR_ADMIN_TOKEN to enable")
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise ApiError(401, "unauthorized", "missing bearer token", challenge)
    expected = settings.admin_token.get_secret_value().encode()
    if not hmac.compare_digest(credentials.credentials.encode(), expected):
        raise ApiError(401, "unauthorized", "wrong admin token", challenge)


async def require_search_key(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_search_bearer)],
) -> None:
    """Router-level guard for the /v1 routes: open unless RR_API_KEYS is set."""
    keys = settings.api_key_list
    if not keys:
        return
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None or credentials.scheme.lower() != "bearer":
        message = "missing API key (send Authorization: Bearer <key>)"
        raise ApiError(401, "unauthorized", message, challenge)
    given = credentials.credentials.encode()
    # Every key compared, each in constant time: no early exit tells which one was close.
    if not sum(hmac.compare_digest(given, key) for key in keys):
        raise ApiError(401, "unauthorized", "wrong API key", challenge)

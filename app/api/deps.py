"""FastAPI dependencies, as `Annotated` aliases the routes declare."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import Depends, Path, Request

from app.ops.auth import LOCAL_ADMIN, AuthError, Principal
from app.ops.limits import TooBusyError
from app.ops.shared_state import SharedStateError
from app.services import Services
from app.settings import Settings

log = logging.getLogger(__name__)


async def get_services(request: Request) -> Services:
    """A coroutine, as every dependency that does no I/O: a sync one would take a worker thread."""
    services: Services = request.app.state.services
    return services


async def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.services.settings
    return settings


ServicesDep = Annotated[Services, Depends(get_services)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
# A row id in a path: bounded to what SQL integers hold, so an absurd id is a 422, not a database error.
RowId = Annotated[int, Path(ge=1, le=2**63 - 1)]


def api_key(request: Request) -> str | None:
    """The key from `Authorization: Bearer <key>` (what OpenAI clients send) or `X-API-Key`."""
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return request.headers.get("x-api-key") or None


def get_principal(request: Request, services: ServicesDep) -> Principal:
    """Who is asking; every /v1 route depends on it. With auth off (loopback, the default) that is the
    local admin. A key's requests count against its rate limit; the admin key's do not. Failed attempts
    count against the client address: once it has used them up it gets 429 without its key being checked,
    so keys cannot be guessed at speed."""
    if not services.settings.auth_required:
        return LOCAL_ADMIN
    address = f"address:{request.client.host if request.client else 'unknown'}"
    try:
        _peek_failures(services, address)
        try:
            principal = services.keys.authenticate(api_key(request))
        except AuthError:
            services.auth_failures.check(address)
            raise
    except TooBusyError:
        services.metrics.rejected.labels("auth_failures").inc()
        raise
    request.state.principal = principal.name
    if principal.key_id is not None:
        try:
            services.rate_limiter.check(f"key:{principal.key_id}")
        except TooBusyError:
            services.metrics.rejected.labels("rate_limit").inc()
            raise
    return principal


def _peek_failures(services: Services, address: str) -> None:
    """`TooBusyError` when `address` has used up its failed authentications. Where they cannot be counted
    (the shared Redis is down) a right key still gets in; a wrong one gets 503 when its failure is counted."""
    try:
        services.auth_failures.peek(address)
    except SharedStateError as error:
        log.warning("failed authentications cannot be checked: %s", error)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def require_admin(principal: PrincipalDep) -> Principal:
    """The caller, when it is the admin (403 for any other key)."""
    principal.require_admin()
    return principal

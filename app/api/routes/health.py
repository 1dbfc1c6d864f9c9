"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from app.api.deps import ServicesDep
from app.api.routing import api_router

router = api_router(tags=["health"])


# Both probes are coroutines on the event loop, with async dependencies: a server whose worker threads are all
# held by generations still answers them.


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "alive"}


@router.get("/readyz")
async def readyz(services: ServicesDep) -> JSONResponse:
    """200 once every part is loaded; otherwise 503 with each part's state and, for a part that failed to
    load (a corrupt model, a context window too small to answer from), `errors` with the reason."""
    parts = services.readiness()
    ready = all(state == "ready" for state in parts.values())
    body: dict[str, object] = {"ready": ready, **parts}
    if failures := services.failures():
        body["errors"] = failures
    return JSONResponse(body, status_code=200 if ready else 503)

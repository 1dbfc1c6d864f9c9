"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.deps import ServicesDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "alive"}


@router.get("/readyz")
def readyz(services: ServicesDep) -> JSONResponse:
    parts = services.readiness()
    ready = all(state == "ready" for state in parts.values())
    return JSONResponse({"ready": ready, **parts}, status_code=200 if ready else 503)

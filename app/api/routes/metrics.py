"""`GET /metrics`: Prometheus text format; when keys are required, for the admin key only."""

from __future__ import annotations

from fastapi import Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST

from app.api.deps import ServicesDep, require_admin
from app.api.errors import API_ERRORS
from app.api.routing import api_router

router = api_router(
    tags=["health"],
    dependencies=[Depends(require_admin)],
    responses={code: API_ERRORS[code] for code in (401, 403, 429)},
)


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
def metrics(services: ServicesDep) -> Response:
    return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)

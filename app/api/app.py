"""The FastAPI application: routers (every /v1 route behind the API-key check), error handlers that
always answer JSON, request-id/metrics middleware, body size limits, and service lifetime."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from anyio import to_thread
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from app.api.deps import get_principal
from app.api.errors import API_ERRORS, ERROR_STATUS, invalid_input, status_of
from app.api.middleware import RequestMiddleware
from app.api.routes import (
    chat,
    collections,
    conversations,
    docs,
    documents,
    health,
    jobs,
    keys,
    metrics,
    query,
    search,
)
from app.services import Services
from app.settings import Settings, get_settings

log = logging.getLogger(__name__)


def create_app(services: Services | None = None, settings: Settings | None = None) -> FastAPI:
    """Build the app; tests pass ready `services`, the server lets the lifespan load them."""
    owned = services is None
    app_services = services or Services(settings or get_settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The sync routes run on this many threads; the probes need none, so they answer however many
        # generations hold threads.
        to_thread.current_default_thread_limiter().total_tokens = app_services.settings.api_threads
        app_services.start()
        yield
        if owned:
            app_services.close()

    app = FastAPI(
        title="Archivist",
        version="0.1.0",
        description="Answers questions about your own documents, with citations, on your own hardware.",
        lifespan=lifespan,
        openapi_url=None,  # served by routes.docs, behind the key check, with no CDN
    )
    app.state.services = app_services
    for router in (health.router, metrics.router, docs.router):
        app.include_router(router)
    authorized = [Depends(get_principal)]
    for router in (
        query.router,
        search.router,
        chat.router,
        collections.router,
        conversations.router,
        keys.router,
        jobs.router,
        documents.router,
    ):
        app.include_router(router, dependencies=authorized, responses=API_ERRORS)
    limits = app_services.settings
    app.add_middleware(
        RequestMiddleware,
        metrics=app_services.metrics,
        max_body_bytes=limits.max_body_bytes,
        max_upload_bytes=limits.max_upload_request_bytes,
    )

    def known_error(request: Request, error: Exception) -> JSONResponse:
        headers = getattr(error, "headers", None)
        return JSONResponse({"detail": str(error)}, status_code=status_of(error), headers=headers)

    for kind in ERROR_STATUS:
        app.add_exception_handler(kind, known_error)
    app.add_exception_handler(RequestValidationError, invalid_input)

    @app.exception_handler(Exception)
    def unexpected_error(request: Request, error: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=error)
        return JSONResponse({"detail": "internal error; see the server log"}, status_code=500)

    return app

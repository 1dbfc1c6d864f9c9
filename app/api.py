"""The FastAPI application: routers, error handlers that always answer JSON, and service lifetime."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from app.routes import collections, documents, health, query
from app.services import NotReadyError, Services
from app.settings import Settings, get_settings
from app.uploads import UploadTooLargeError
from llm.base import ContextOverflowError
from retriever.store import InvalidNameError, NotFoundError

log = logging.getLogger(__name__)

ERROR_STATUS: dict[type[Exception], int] = {
    NotFoundError: 404,
    InvalidNameError: 422,
    ContextOverflowError: 422,
    UploadTooLargeError: 413,
    NotReadyError: 503,
}


def create_app(services: Services | None = None, settings: Settings | None = None) -> FastAPI:
    """Build the app; tests pass ready `services`, the server lets the lifespan load them."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = services is None
        app.state.services = services or Services(settings or get_settings())
        app.state.services.start()
        yield
        if owned:
            app.state.services.close()

    app = FastAPI(
        title="Archivist",
        version="0.1.0",
        description="Answers questions about your own documents, with citations, on your own hardware.",
        lifespan=lifespan,
    )
    for router in (health.router, query.router, documents.router, collections.router):
        app.include_router(router)

    def known_error(request: Request, error: Exception) -> JSONResponse:
        status = next(code for kind, code in ERROR_STATUS.items() if isinstance(error, kind))
        return JSONResponse({"detail": str(error)}, status_code=status)

    for kind in ERROR_STATUS:
        app.add_exception_handler(kind, known_error)

    @app.exception_handler(Exception)
    def unexpected_error(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error; see the server log"}, status_code=500)

    return app

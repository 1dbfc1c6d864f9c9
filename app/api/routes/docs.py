"""The API's own description: `GET /openapi.json` and `GET /docs` (Swagger UI). Both take a key like any
/v1 route when keys are required; the page's script, style and icon come from the installed
`fastapi-offline` package, so a browser showing it fetches nothing from outside this server."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import fastapi_offline
from fastapi import Depends, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from app.api.deps import get_principal
from app.api.routing import api_router

ASSETS = Path(fastapi_offline.__file__).parent / "static"
Asset = Literal["swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"]

router = api_router(include_in_schema=False, dependencies=[Depends(get_principal)])


@router.get("/openapi.json")
def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@router.get("/docs")
def docs(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "").rstrip("/")
    return get_swagger_ui_html(
        openapi_url=f"{root}/openapi.json",
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{root}/docs/swagger-ui-bundle.js",
        swagger_css_url=f"{root}/docs/swagger-ui.css",
        swagger_favicon_url=f"{root}/docs/favicon.png",
        swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from swagger.io
    )


@router.get("/docs/{asset}")
def docs_asset(asset: Asset) -> FileResponse:
    return FileResponse(ASSETS / asset)

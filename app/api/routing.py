"""The API's routers: FastAPI's, with request bodies read so that JSON nested past Python's recursion limit is
an invalid body (422, like any malformed JSON) rather than an unreadable one (FastAPI's 400)."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute


class JSONRequest(Request):
    async def json(self) -> Any:
        try:
            return await super().json()
        except RecursionError as error:
            raise json.JSONDecodeError("JSON nested too deeply", "", 0) from error


class JSONRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            return await handler(JSONRequest(request.scope, request.receive))

        return route


def api_router(**options: Any) -> APIRouter:
    """`APIRouter(**options)` whose routes read bodies as `JSONRequest`s."""
    return APIRouter(route_class=JSONRoute, **options)

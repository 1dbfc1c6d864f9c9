"""Per-request bookkeeping as plain ASGI (so streamed responses pass through untouched): a request id
(the client's `X-Request-ID` when it is sane, else a new one) echoed in the response and put on every log
line, request body size limits (uploads have their own), the latency histogram by route template, and one
JSON access-log line."""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.ops.logs import REQUEST_ID
from app.ops.metrics import Metrics

log = logging.getLogger("archivist.access")
REQUEST_ID_HEADER = "x-request-id"
SANE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def route_template(scope: Scope) -> str:
    """The matched route's path template: bounded label values, unlike raw paths with ids in them."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class BodyTooLargeError(HTTPException):
    """Raised while the body is read; FastAPI passes HTTPExceptions from body parsing straight through."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than the {limit} byte limit")


class RequestMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, max_body_bytes: int, max_upload_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes

    def _body_limit(self, headers: dict[bytes, bytes]) -> int:
        multipart = headers.get(b"content-type", b"").lower().startswith(b"multipart/form-data")
        return self.max_upload_bytes if multipart else self.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        offered = headers.get(REQUEST_ID_HEADER.encode(), b"").decode("latin-1")
        request_id = offered if SANE_ID.match(offered) else uuid.uuid4().hex
        token = REQUEST_ID.set(request_id)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER.encode(), request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        limit = self._body_limit(headers)
        received = 0

        async def receive_limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLargeError(limit)
            return message

        try:
            declared = headers.get(b"content-length", b"")
            if declared.isdigit() and int(declared) > limit:
                error = BodyTooLargeError(limit)
                await JSONResponse({"detail": error.detail}, 413)(scope, receive, send_with_id)
            else:
                await self.app(scope, receive_limited, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = route_template(scope)
            method = scope["method"]
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(seconds)
            state = scope.get("state") or {}
            log.info(
                "request",
                extra={
                    "method": method,
                    "path": scope["path"],
                    "route": route,
                    "status": status,
                    "duration_ms": round(seconds * 1000, 2),
                    "key": state.get("principal"),
                },
            )
            REQUEST_ID.reset(token)

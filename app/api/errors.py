"""Which service error answers which HTTP status; every error body is JSON `{"detail": ...}`. Errors may
carry `headers` (Retry-After, WWW-Authenticate) to send along."""

from __future__ import annotations

import math
from typing import Any

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from app.api.schemas import ErrorPublic
from app.ops.auth import AuthError, ForbiddenError
from app.ops.limits import TooBusyError
from app.ops.uploads import UploadNameError, UploadTooLargeError
from app.rag.generation import GenerationFailedError, GenerationTimeoutError
from llm.base import ContextOverflowError
from llm.remote import BackendUnavailableError
from retriever.records import InvalidNameError, NotFoundError, ServiceUnavailableError


class NotReadyError(RuntimeError):
    """A model or index is still loading (with `retry_after` seconds to wait), or failed to load."""

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after)} if retry_after else None


class InvalidRequestError(ValueError):
    """A request that is well-formed but contradicts itself or the stored state (422)."""


ERROR_STATUS: dict[type[Exception], int] = {
    NotFoundError: 404,
    InvalidNameError: 422,
    InvalidRequestError: 422,
    UploadNameError: 422,
    ContextOverflowError: 422,
    UploadTooLargeError: 413,
    AuthError: 401,
    ForbiddenError: 403,
    TooBusyError: 429,
    NotReadyError: 503,
    GenerationTimeoutError: 503,
    GenerationFailedError: 503,
    ServiceUnavailableError: 503,
    BackendUnavailableError: 503,
}


# Documented on every /v1 route, so clients (and the schema tests) know each error's shape.
API_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorPublic, "description": description}
    for code, description in (
        (400, "The body could not be read (e.g. invalid UTF-8)"),
        (401, "No API key, or a wrong, expired or revoked one"),
        (403, "The key lacks the right for this collection or action"),
        (404, "Unknown collection, document, conversation, job, key or model"),
        (413, "Request body over the size limit"),
        (422, "Invalid input"),
        (429, "Rate limit or generation queue full; see Retry-After"),
        (
            503,
            "Models still loading or failed to load, no generation slot before the deadline (see "
            "Retry-After), the model failed while generating, or a shared service (Redis, the broker, the "
            "LLM servers) is unreachable",
        ),
    )
}


def status_of(error: BaseException) -> int:
    return next((code for kind, code in ERROR_STATUS.items() if isinstance(error, kind)), 500)


def json_safe(value: Any) -> Any:
    """`value` (already made of JSON types) with what strict JSON cannot carry spelled out: the non-finite
    floats Python's parser accepts (`NaN`, `1e400`) as strings, lone surrogates as backslash escapes."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {json_safe(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


def invalid_input(request: Request, error: Exception) -> JSONResponse:
    """422 listing each invalid field (`loc`, `msg`, and the `input` it got, made encodable: FastAPI's own
    handler fails with a 500 on an input of NaN or a lone surrogate)."""
    assert isinstance(error, RequestValidationError)
    return JSONResponse({"detail": json_safe(jsonable_encoder(error.errors()))}, status_code=422)

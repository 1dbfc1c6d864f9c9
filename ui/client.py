"""A small HTTP client for the Archivist REST API, used by the chat page."""

from __future__ import annotations

import os
from typing import Any

import httpx


class ApiError(RuntimeError):
    """The API could not be reached or refused the request; the message is meant for the user."""


class ArchivistClient:
    def __init__(self, base_url: str | None = None, timeout: float = 300.0) -> None:
        self.base_url = (base_url or os.environ.get("ARCHIVIST_API_URL") or "http://127.0.0.1:8000").rstrip(
            "/"
        )
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as error:
            raise ApiError(f"cannot reach the Archivist API at {self.base_url}: {error}") from error
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ApiError(f"the API answered {response.status_code}: {detail}")
        return response.json()

    def collections(self) -> list[dict[str, Any]]:
        return list(self._request("GET", "/v1/collections")["collections"])

    def query(self, question: str, collection: str | None, top_k: int | None = None) -> dict[str, Any]:
        body = {"question": question, "collection": collection, "top_k": top_k}
        return dict(self._request("POST", "/v1/query", json=body))

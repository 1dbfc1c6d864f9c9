"""A small HTTP client for the Archivist REST API, used by the chat page (the page's only way in).

`ARCHIVIST_API_URL` says where the API is, `ARCHIVIST_API_KEY` which key to send when it requires one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from email.message import Message
from typing import Any

import httpx


class ApiError(RuntimeError):
    """The API could not be reached or refused the request; the message is meant for the user."""


class ArchivistClient:
    def __init__(
        self, base_url: str | None = None, api_key: str | None = None, timeout: float = 300.0
    ) -> None:
        self.base_url = (base_url or os.environ.get("ARCHIVIST_API_URL") or "http://127.0.0.1:8000").rstrip(
            "/"
        )
        key = api_key or os.environ.get("ARCHIVIST_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, headers=headers)

    def _unreachable(self, error: httpx.HTTPError) -> ApiError:
        return ApiError(f"cannot reach the Archivist API at {self.base_url}: {error}")

    @staticmethod
    def _refused(response: httpx.Response) -> ApiError:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        wait = response.headers.get("retry-after")
        hint = f" (try again in {wait} s)" if wait else ""
        return ApiError(f"the API answered {response.status_code}: {detail}{hint}")

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as error:
            raise self._unreachable(error) from error
        if response.status_code >= 400:
            raise self._refused(response)
        return response.json()

    def collections(self) -> list[dict[str, Any]]:
        return list(self._request("GET", "/v1/collections")["collections"])

    def conversations(self, collection: str) -> list[dict[str, Any]]:
        return list(
            self._request("GET", "/v1/conversations", params={"collection": collection})["conversations"]
        )

    def conversation(self, conversation_id: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/v1/conversations/{conversation_id}"))

    def create_conversation(self, collection: str) -> dict[str, Any]:
        return dict(self._request("POST", "/v1/conversations", json={"collection": collection}))

    def delete_conversation(self, conversation_id: str) -> None:
        self._request("DELETE", f"/v1/conversations/{conversation_id}")

    def ask(self, question: str, **options: Any) -> Iterator[tuple[str, dict[str, Any]]]:
        """The answer as Server-Sent Events: ("sources", …), ("delta", {"text"}) …, ("done", reply).
        An in-band error event is raised as ApiError."""
        body = {"question": question, "stream": True, **{k: v for k, v in options.items() if v is not None}}
        try:
            with self._http.stream("POST", "/v1/query", json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    raise self._refused(response)
                event = "message"
                for line in response.iter_lines():
                    if line.startswith("event: "):
                        event = line.removeprefix("event: ")
                    elif line.startswith("data: "):
                        data = json.loads(line.removeprefix("data: "))
                        if event == "error":
                            raise ApiError(f"the answer failed: {data.get('detail')}")
                        yield event, data
                        event = "message"
        except httpx.HTTPError as error:
            raise self._unreachable(error) from error

    def upload(self, collection: str, files: list[tuple[str, bytes]]) -> dict[str, Any]:
        """Start a background ingest job for the files; returns the job (poll it with `job`)."""
        parts = [("files", (name, content)) for name, content in files]
        return dict(self._request("POST", "/v1/documents", files=parts, data={"collection": collection}))

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/v1/jobs/{job_id}"))

    def document_text(self, document_id: int) -> dict[str, Any]:
        """The document's cleaned text, which a source's `char_start`/`char_end` point into."""
        return dict(self._request("GET", f"/v1/documents/{document_id}/text"))

    def document_file(self, document_id: int) -> tuple[str, bytes] | None:
        """(file name, content) of the document's original file; None when the API no longer keeps it."""
        try:
            response = self._http.get(f"/v1/documents/{document_id}/file")
        except httpx.HTTPError as error:
            raise self._unreachable(error) from error
        if response.status_code == 404:
            return None
        if response.status_code >= 400:
            raise self._refused(response)
        disposition = Message()
        disposition["content-disposition"] = response.headers.get("content-disposition", "")
        return disposition.get_filename() or f"document-{document_id}", response.content

"""Server-Sent Events: the response class and the event stream of `POST /v1/query` with `stream: true`.

Events: `sources` (the numbered passages, before any text), `delta` (text as it is generated), then
`done` (the same body a non-streamed query returns: verified citations, finish reason, token counts,
timings) or `error` (`{"detail", "status"}`) when the generation failed after the response started.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable

from pydantic import BaseModel
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from app.api.errors import status_of
from app.api.schemas import StreamDelta, StreamSources
from app.api.views import answer_public, source_public
from app.rag.answering import Answering, Prepared
from app.rag.generation import Delta

log = logging.getLogger(__name__)


def sse(event: str | None, data: BaseModel | dict[str, object] | str) -> str:
    if isinstance(data, BaseModel):
        payload = data.model_dump_json()
    elif isinstance(data, dict):
        payload = json.dumps(data, ensure_ascii=False)
    else:
        payload = data
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n"


class EventStreamResponse(StreamingResponse):
    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None]) -> None:
        # No caching or proxy buffering: each event must reach the client when it is sent.
        super().__init__(content, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # When the client goes away Starlette stops iterating without closing the iterator (which may
            # not even have started): `on_close` cancels the generation behind it; after a complete
            # response it has nothing left to stop.
            self._on_close()


async def query_events(answering: Answering, prepared: Prepared) -> AsyncIterator[str]:
    sources = [source_public(s) for s in prepared.sources]
    yield sse(
        "sources",
        StreamSources(
            question=prepared.standalone,
            collection=prepared.collection,
            conversation_id=prepared.conversation_id,
            sources=sources,
        ),
    )
    try:
        async for event in answering.stream(prepared):
            if isinstance(event, Delta):
                yield sse("delta", StreamDelta(text=event.text))
            else:
                yield sse("done", answer_public(event.result, prepared.collection, prepared.conversation_id))
    except Exception as error:  # the response has started: report in-band
        status = status_of(error)
        if status == 500:
            log.exception("streamed generation failed")
        detail = str(error) if status != 500 else "internal error; see the server log"
        yield sse("error", {"detail": detail, "status": status})

"""OpenAI-compatible endpoints: `GET /v1/models` (one model per collection, `archivist:<collection>`, and one
per collection and LoRA adapter, `archivist:<collection>+<adapter>`) and
`POST /v1/chat/completions`, whole or streamed, with the passages as `references`. Earlier user messages
are the conversation history that follow-up questions are rewritten from."""

from __future__ import annotations

import time
import uuid

from fastapi import Response

from app.api.deps import PrincipalDep, ServicesDep
from app.api.openai_compat import Completion, error_response, model_target
from app.api.openai_schemas import MODEL_PREFIX, ChatCompletion, ChatCompletionCreate, ModelList, ModelPublic
from app.api.routing import api_router
from app.api.schemas import QueryCreate
from app.api.sse import EventStreamResponse
from app.rag.generation import GenerationFailedError
from app.rag.rewrite import standalone_history
from llm.base import served_adapters

router = api_router(prefix="/v1", tags=["openai"])


@router.get("/models", response_model=ModelList)
def list_models(services: ServicesDep, principal: PrincipalDep) -> ModelList:
    names = principal.readable(c.name for c in services.kb().list_collections())
    adapters = served_adapters(services.generator())
    suffixes = ["", *(f"+{adapter}" for adapter in adapters)]
    ids = [f"{MODEL_PREFIX}:{name}{suffix}" for name in names for suffix in suffixes]
    return ModelList(data=[ModelPublic(id=model_id) for model_id in ids])


@router.post(
    "/chat/completions",
    response_model=ChatCompletion,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "JSON, or with `stream: true` chunks"}
    },
)
def chat_completions(
    body: ChatCompletionCreate, services: ServicesDep, principal: PrincipalDep
) -> ChatCompletion | Response:
    *earlier, question = body.questions
    collection, adapter = model_target(body.model, services.settings.default_collection)
    ask = QueryCreate(
        question=question,
        collection=collection,
        adapter=adapter,
        top_k=body.top_k,
        mode=body.mode,
        temperature=body.temperature,
        max_tokens=body.max_completion_tokens or body.max_tokens,
    )
    prepared = services.answering.prepare(ask, principal, standalone_history(earlier))
    completion = Completion(f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), body.model)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = completion.chunks(services.answering, prepared, include_usage)
        return EventStreamResponse(chunks, on_close=prepared.cancel)
    try:
        return completion.whole(services.answering.complete(prepared))
    except GenerationFailedError as error:  # OpenAI clients read the reason from an error object
        return error_response(error)

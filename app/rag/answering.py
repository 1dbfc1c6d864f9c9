"""Answering questions for the API.

`prepare` does everything that can fail with a clean HTTP status before a response starts: conversation
and rights, the standalone question, the answer cache, retrieval, the relevance gate and admission to the
generation queue. Then `complete` (JSON) or `stream` (events) consumes the generation, which runs in a
worker and ends in `_finish`: grounding, cache, conversation and metrics — once, however it is consumed.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING

from app.api.errors import InvalidRequestError
from app.api.schemas import QueryCreate
from app.api.views import answer_public
from app.ops.auth import Principal
from app.ops.limits import TooBusyError
from app.rag.cache import CacheKey, normalize_question
from app.rag.generation import Delta, Done, GenerationRun, Outcome
from app.rag.pipeline import Answer, AnswerStyle, RagPipeline, Source, build_messages
from app.rag.rewrite import standalone_question
from llm.base import NO_ADAPTER, GenerationResult, Generator, served_adapters

if TYPE_CHECKING:
    from app.services import Services

# Fields of a query that do not change its answer (the question is keyed separately, normalized).
NOT_ANSWER_SHAPING = {"question", "stream", "conversation_id", "collection"}


@dataclass
class Prepared:
    question: str
    standalone: str
    collection: str
    conversation_id: str | None
    sources: list[Source] = field(default_factory=list)
    answer: Answer | None = None  # known without generating: cached, or refused for lack of relevance
    run: GenerationRun[Answer] | None = None

    def cancel(self) -> None:
        """Stop the generation, if one is running (a no-op once it has finished)."""
        if self.run is not None:
            self.run.cancel()


class Answering:
    def __init__(self, services: Services) -> None:
        self.services = services

    def prepare(self, body: QueryCreate, principal: Principal, history: Sequence[str] = ()) -> Prepared:
        """Everything before generation; `history` holds earlier questions when no conversation is named
        (the OpenAI endpoint passes its messages)."""
        services, settings = self.services, self.services.settings
        prepared = self._place(body, principal, history)
        collection = prepared.collection
        kb, generator = services.kb(), services.generator()
        max_new_tokens = min(body.max_tokens or settings.max_new_tokens, settings.max_new_tokens)
        style, adapter, temperature = (
            AnswerStyle.of(settings),
            self._adapter(body.adapter, generator),
            body.temperature or 0.0,
        )
        top_k = body.top_k or settings.top_k
        version = kb.collection_version(collection)
        # Only greedy answers are reproducible, so only they are cached.
        key = self._cache_key(body, prepared, version, top_k, max_new_tokens) if temperature == 0 else None
        if key is not None and (cached := self._cached(key)) is not None:
            prepared.answer = replace(cached, cached=True)
            prepared.sources = cached.sources
            self._store(prepared, prepared.answer)
            return prepared

        pipeline = RagPipeline(kb, generator, max_new_tokens, settings.min_relevance, style=style)
        started = time.perf_counter()
        filters = body.filters.search_filters() if body.filters else None
        question = prepared.standalone
        prepared.sources, relevance = pipeline.retrieve(question, collection, top_k, body.mode, filters)
        retrieve_ms = (time.perf_counter() - started) * 1000
        services.metrics.retrieve.observe(retrieve_ms / 1000)
        if relevance < settings.min_relevance:
            answer = pipeline.refuse(prepared.standalone, prepared.sources, relevance, retrieve_ms)
            return self._settled(prepared, answer, "no_answer", key)
        if style.extracts(question, prepared.sources):
            answer = pipeline.extract(question, prepared.sources, relevance, {"retrieve_ms": retrieve_ms})
            return self._settled(prepared, answer, "extracted" if answer.grounded else "ungrounded", key)

        try:
            ticket = services.gate().admit()
        except TooBusyError:
            services.metrics.rejected.labels("queue_full").inc()
            raise
        finish = partial(self._finish, prepared, pipeline, relevance, retrieve_ms, key)
        prepared.run = GenerationRun(
            generator,
            build_messages(prepared.standalone, prepared.sources),
            style.params(max_new_tokens, adapter, temperature, prepared.sources),
            ticket,
            settings.generation_timeout_s,
            finish,
        )
        return prepared

    def complete(self, prepared: Prepared) -> Answer:
        if prepared.answer is not None:
            return prepared.answer
        assert prepared.run is not None
        return prepared.run.result()

    async def stream(self, prepared: Prepared) -> AsyncIterator[Delta | Done[Answer]]:
        if prepared.answer is not None:
            yield Delta(prepared.answer.answer)
            yield Done(prepared.answer)
            return
        assert prepared.run is not None
        async for event in prepared.run.aevents():
            yield event

    # -- internals ---------------------------------------------------------------------------------------

    def _settled(self, prepared: Prepared, answer: Answer, kind: str, key: CacheKey | None) -> Prepared:
        """An answer known without generating (refused for lack of relevance, or extracted): counted,
        cached and stored like a generated one."""
        prepared.answer = answer
        self.services.metrics.answers.labels(kind).inc()
        if key is not None:
            self.services.cache.put(key, answer)
        self._store(prepared, answer)
        return prepared

    def _place(self, body: QueryCreate, principal: Principal, history: Sequence[str]) -> Prepared:
        """Which collection is asked, in which conversation, and the question made standalone."""
        conversation = None
        if body.conversation_id:
            conversation = self.services.conversations.visible(body.conversation_id, principal)
            if body.collection and body.collection != conversation.collection:
                raise InvalidRequestError(
                    f"conversation {conversation.id} asks collection {conversation.collection!r}, "
                    f"not {body.collection!r}"
                )
            history = conversation.previous_questions
        collection = body.collection or (conversation.collection if conversation else None)
        collection = collection or self.services.settings.default_collection
        principal.require_read(collection)
        return Prepared(
            question=body.question,
            standalone=standalone_question(body.question, history),
            collection=collection,
            conversation_id=conversation.id if conversation else None,
        )

    @staticmethod
    def _adapter(adapter: str | None, generator: Generator) -> str | None:
        """The requested adapter, checked against those the generator serves (422 naming the field)."""
        if adapter is None or adapter == NO_ADAPTER or adapter in served_adapters(generator):
            return adapter
        served = ", ".join(served_adapters(generator)) or "none"
        raise InvalidRequestError(f"adapter: unknown adapter {adapter!r}; this model serves: {served}")

    def _cache_key(
        self, body: QueryCreate, prepared: Prepared, version: int, top_k: int, max_new_tokens: int
    ) -> CacheKey:
        shaping = body.model_dump(mode="json", exclude=NOT_ANSWER_SHAPING)
        shaping.update(top_k=top_k, max_tokens=max_new_tokens, model=self.services.generator().name)
        return CacheKey(
            collection=prepared.collection,
            version=version,
            question=normalize_question(prepared.standalone),
            settings=json.dumps(shaping, sort_keys=True),
        )

    def _cached(self, key: CacheKey) -> Answer | None:
        answer = self.services.cache.get(key)
        self.services.metrics.cache_lookups.labels("hit" if answer else "miss").inc()
        if answer is not None:
            self.services.metrics.answers.labels("cached").inc()
        return answer

    def _finish(
        self,
        prepared: Prepared,
        pipeline: RagPipeline,
        relevance: float,
        retrieve_ms: float,
        key: CacheKey | None,
        outcome: Outcome,
    ) -> Answer:
        """Runs in the generation worker when the generation ends, however it ended. A failed generation
        raises from `conclude`, before anything is cached or stored, and reaches the consumer as an error."""
        metrics = self.services.metrics
        metrics.generations.labels(outcome.reason).inc()
        metrics.completion_tokens.inc(outcome.completion_tokens)
        result = GenerationResult(
            outcome.text.strip(), outcome.finish_reason, outcome.prompt_tokens, outcome.completion_tokens
        )
        timings = {"retrieve_ms": retrieve_ms, **outcome.timings}
        answer = pipeline.conclude(prepared.standalone, prepared.sources, relevance, result, timings)
        answer.finish_reason = outcome.reason
        metrics.answers.labels("generated" if answer.grounded else "ungrounded").inc()
        if "queue_ms" in timings:
            metrics.queue_wait.observe(timings["queue_ms"] / 1000)
        if "ttft_ms" in timings:
            metrics.ttft.observe(timings["ttft_ms"] / 1000)
        if "tokens_per_s" in answer.timings:
            metrics.tokens_per_second.observe(answer.timings["tokens_per_s"])
        if "generate_ms" in timings:
            self.services.gate().record(timings["generate_ms"] / 1000)
        if key is not None and outcome.reason in ("stop", "length"):
            self.services.cache.put(key, answer)
        if outcome.text or outcome.finish_reason != "cancelled":
            self._store(prepared, answer)
        return answer

    def _store(self, prepared: Prepared, answer: Answer) -> None:
        if prepared.conversation_id is None:
            return
        reply = answer_public(answer, prepared.collection, prepared.conversation_id)
        self.services.conversations.append_exchange(
            prepared.conversation_id,
            prepared.question,
            prepared.standalone,
            answer.answer,
            reply.model_dump(mode="json"),
        )

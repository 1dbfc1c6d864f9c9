"""`POST /v1/query`: a cited answer from the documents of one collection."""

from __future__ import annotations

from fastapi import APIRouter

from app.deps import ServicesDep
from app.rag import Answer, RagPipeline
from app.schemas import QueryCreate, QueryPublic, SourcePublic, Timings

router = APIRouter(prefix="/v1", tags=["query"])


def answer_public(answer: Answer) -> QueryPublic:
    return QueryPublic(
        answer=answer.answer,
        sources=[
            SourcePublic(
                n=source.n,
                document_id=source.hit.document_id,
                title=source.hit.title,
                chunk_id=source.hit.chunk_id,
                ordinal=source.hit.ordinal,
                char_start=source.hit.char_start,
                char_end=source.hit.char_end,
                text=source.hit.text,
                score=source.hit.score,
            )
            for source in answer.sources
        ],
        cited=answer.cited,
        finish_reason=answer.finish_reason,
        timings=Timings(**answer.timings),
    )


@router.post("/query", response_model=QueryPublic)
def query(body: QueryCreate, services: ServicesDep) -> QueryPublic:
    settings = services.settings
    pipeline = RagPipeline(services.kb(), services.generator(), settings.max_new_tokens)
    answer = pipeline.answer(
        body.question, body.collection or settings.default_collection, body.top_k or settings.top_k
    )
    return answer_public(answer)

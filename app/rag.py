"""The RAG pipeline: retrieve passages, number them in a prompt, generate, and keep only real citations."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from llm.base import ChatMessage, Generator, SamplingParams, collect
from retriever.store import KnowledgeBase, SearchHit

SYSTEM_PROMPT = (
    "You are Archivist, an assistant that answers questions using only the numbered passages provided. "
    "Cite the passages you use with their numbers in square brackets, like [1] or [2][3]. "
    "If the passages do not contain the answer, say that the documents do not contain it."
)
CITATION = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")


@dataclass(frozen=True)
class Source:
    n: int
    hit: SearchHit


@dataclass
class Answer:
    answer: str
    sources: list[Source]
    cited: list[int]
    finish_reason: str = "stop"
    timings: dict[str, float] = field(default_factory=dict)


def format_passages(sources: Sequence[Source]) -> str:
    return "\n\n".join(f"[{s.n}] (from {s.hit.title})\n{s.hit.text}" for s in sources)


def build_messages(question: str, sources: Sequence[Source]) -> list[ChatMessage]:
    user = f"Passages:\n\n{format_passages(sources)}\n\nQuestion: {question}\nAnswer with citations:"
    return [ChatMessage("system", SYSTEM_PROMPT), ChatMessage("user", user)]


def parse_citations(answer: str, source_count: int) -> list[int]:
    """Numbers cited as [n] or [n, m] that exist among the sources, in order of first appearance.
    An invented number (e.g. [7] with five sources) is dropped."""
    cited: list[int] = []
    for match in CITATION.finditer(answer):
        for number in (int(part) for part in match.group(1).split(",")):
            if 1 <= number <= source_count and number not in cited:
                cited.append(number)
    return cited


def fit_sources(
    question: str, hits: Sequence[SearchHit], generator: Generator, max_new_tokens: int
) -> list[Source]:
    """Number the hits, dropping the lowest-ranked ones that would overflow the model's context window."""
    budget = generator.context_window - max_new_tokens
    sources = [Source(n, hit) for n, hit in enumerate(hits, start=1)]
    while sources:
        messages = build_messages(question, sources)
        used = sum(generator.count_tokens(m.content) for m in messages) + 16 * len(messages)
        if used <= budget:
            break
        sources.pop()
    return sources


class RagPipeline:
    def __init__(self, kb: KnowledgeBase, generator: Generator, max_new_tokens: int) -> None:
        self.kb = kb
        self.generator = generator
        self.max_new_tokens = max_new_tokens

    def answer(self, question: str, collection: str, top_k: int) -> Answer:
        started = time.perf_counter()
        hits = self.kb.search(question, collection, top_k)
        retrieved = time.perf_counter()
        sources = fit_sources(question, hits, self.generator, self.max_new_tokens)
        params = SamplingParams(max_new_tokens=self.max_new_tokens)
        result = collect(self.generator.stream(build_messages(question, sources), params))
        text = result.text.strip()
        return Answer(
            answer=text,
            sources=sources,
            cited=parse_citations(text, len(sources)),
            finish_reason=result.finish_reason,
            timings={
                "retrieve_ms": (retrieved - started) * 1000,
                "generate_ms": result.timings.get("generate_ms", 0.0),
            },
        )

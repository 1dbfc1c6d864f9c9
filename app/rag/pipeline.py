"""The RAG pipeline: retrieve passages, number them in a prompt, generate, and keep only real citations."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from app.rag.extraction import asks_how_or_why, closest_sentence, reads_as_cjk
from app.rag.generation import GenerationFailedError
from app.rag.grounding import NO_ANSWER, PassageText, Refusal, best_relevance, ground, profile_of
from app.settings import Settings
from llm.base import ChatMessage, GenerationResult, Generator, SamplingParams, collect
from llm.copying import CopySpans
from retriever.config import SearchMode
from retriever.context import assemble_context
from retriever.filters import SearchFilters
from retriever.records import SearchHit
from retriever.store import KnowledgeBase

SYSTEM_PROMPT = (
    "You are Archivist. Answer the question from the numbered passages only. Reply with the shortest "
    "answer, in the words of the passage, followed by the number of the passage it comes from in square "
    "brackets, for example: Denver Broncos [2]. "
    f"If the passages do not contain the answer, reply: {NO_ANSWER}"
)


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
    # False when the reply is NO_ANSWER: passages not relevant enough, or the answer had no support in them.
    grounded: bool = True
    highlights: dict[int, tuple[int, int]] = field(default_factory=dict)
    relevance: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    question: str = ""  # the standalone question that was retrieved and answered
    cached: bool = False
    refusal: Refusal | None = None  # why the reply is NO_ANSWER (`app.rag.grounding.Refusal`); None: answered


@dataclass(frozen=True)
class AnswerStyle:
    """How RAG answers are sampled beyond a request's own settings: the repetition control, the margin by
    which the no-answer reply must beat the best answer to be chosen (a cut of its first token's logit at
    the reply's first position, `SamplingParams.opening_bias`), and whether the answer must copy its words
    from the passages (`SamplingParams.copy_spans`: a span of one passage, or the no-answer reply, then the
    citation)."""

    presence_penalty: float = 0.0
    refusal_penalty: float = 0.0
    copy_spans: bool = False
    # The model cannot read CJK: a CJK question, or one answered from CJK passages, gets an extracted answer
    # (`app.rag.extraction`) instead of a generated one.
    extract_cjk: bool = False
    # The model answers with short spans only: a how or why question gets an extracted answer.
    extract_how_why: bool = False

    @classmethod
    def of(cls, settings: Settings) -> AnswerStyle:
        return cls(
            settings.answer_presence_penalty,
            settings.answer_refusal_penalty,
            settings.answer_copy_spans,
            not settings.model_reads_cjk(),
            not settings.model_explains(),
        )

    @property
    def label(self) -> str:
        """How answers are made, for evaluation reports."""
        made = "copied" if self.copy_spans else "free text"
        extracted = [
            kind for kind, on in (("CJK", self.extract_cjk), ("how/why", self.extract_how_why)) if on
        ]
        return f"{made}, {' and '.join(extracted)} extracted" if extracted else made

    def extracted_from(self, question: str, sources: Sequence[Source]) -> Sequence[Source]:
        """The passages this question's answer is extracted from (`app.rag.extraction`); none when the
        model generates it. CJK: the best passage only; how and why: all of them."""
        if not sources:
            return ()
        if self.extract_cjk and (reads_as_cjk(question) or reads_as_cjk(sources[0].hit.text)):
            return sources[:1]
        if self.extract_how_why and asks_how_or_why(question):
            return sources
        return ()

    def extracts(self, question: str, sources: Sequence[Source]) -> bool:
        """Whether this question, answered from these passages, gets an extracted answer."""
        return bool(self.extracted_from(question, sources))

    def params(
        self,
        max_new_tokens: int,
        adapter: str | None,
        temperature: float = 0.0,
        sources: Sequence[Source] = (),
    ) -> SamplingParams:
        copy_spans = None
        if self.copy_spans and sources:
            copy_spans = CopySpans(tuple(s.hit.text for s in sources), (NO_ANSWER,))
        return SamplingParams(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            presence_penalty=self.presence_penalty,
            opening_bias=((NO_ANSWER, -self.refusal_penalty),) if self.refusal_penalty else (),
            adapter=adapter,
            copy_spans=copy_spans,
        )


def format_passages(sources: Sequence[Source]) -> str:
    return "\n\n".join(f"[{s.n}] (from {s.hit.title})\n{s.hit.text}" for s in sources)


def build_messages(question: str, sources: Sequence[Source]) -> list[ChatMessage]:
    user = f"Passages:\n\n{format_passages(sources)}\n\nQuestion: {question}"
    return [ChatMessage("system", SYSTEM_PROMPT), ChatMessage("user", user)]


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
    """Retrieve → (refuse when nothing relevant) → generate → ground. `answer` runs it all in the calling
    thread; the API runs the same steps with admission, caching and streaming around them."""

    def __init__(
        self,
        kb: KnowledgeBase,
        generator: Generator,
        max_new_tokens: int,
        min_relevance: float = -1.0,
        adapter: str | None = None,
        style: AnswerStyle = AnswerStyle(),
    ) -> None:
        self.kb = kb
        self.generator = generator
        self.adapter = adapter  # the LoRA adapter to answer with (None: the generator's default)
        self.style = style
        self.max_new_tokens = max_new_tokens
        self.min_relevance = min_relevance

    def retrieve(
        self,
        question: str,
        collection: str,
        top_k: int,
        mode: SearchMode | None = None,
        filters: SearchFilters | None = None,
    ) -> tuple[list[Source], float]:
        """The numbered passages that fit the context window, and how relevant the best of them is.
        Adjacent chunks are merged and near-duplicates dropped before fitting (`assemble_context`)."""
        hits = assemble_context(self.kb.search(question, collection, top_k, mode, filters))
        sources = fit_sources(question, hits, self.generator, self.max_new_tokens)
        return sources, best_relevance(self.kb, question, [s.hit for s in sources])

    def refuse(self, question: str, sources: list[Source], relevance: float, retrieve_ms: float) -> Answer:
        return Answer(
            answer=NO_ANSWER,
            sources=sources,
            cited=[],
            finish_reason="no_answer",
            timings={"retrieve_ms": retrieve_ms, "generate_ms": 0.0},
            grounded=False,
            relevance=relevance,
            question=question,
            refusal="relevance",
        )

    def extract(
        self, question: str, sources: list[Source], relevance: float, timings: dict[str, float]
    ) -> Answer:
        """The extracted answer (`app.rag.extraction`): the sentence closest to the question of the passages
        `AnswerStyle.extracted_from` names, cited and highlighted; no model time. Passages of headings only
        get the no-answer reply."""
        started = time.perf_counter()
        passages = [(s.n, s.hit.text) for s in self.style.extracted_from(question, sources)]
        found = closest_sentence(profile_of(self.kb, sources[0].hit).embedder, question, passages)
        timings = {**timings, "generate_ms": 0.0, "extract_ms": (time.perf_counter() - started) * 1000}
        if found is None:
            return Answer(NO_ANSWER, sources, [], "no_answer", timings, grounded=False, relevance=relevance,
                          question=question, refusal="unsupported")  # fmt: skip
        return Answer(
            answer=f"{found.text} [{found.n}]",
            sources=sources,
            cited=[found.n],
            timings=timings,
            highlights={found.n: found.span},
            relevance=relevance,
            question=question,
        )

    def conclude(
        self,
        question: str,
        sources: list[Source],
        relevance: float,
        result: GenerationResult,
        timings: dict[str, float],
    ) -> Answer:
        """Verify the citations of a generated answer; an unsupported answer becomes NO_ANSWER. A failed
        generation raises `GenerationFailedError` instead: it says nothing about the documents."""
        if result.finish_reason == "error":
            raise GenerationFailedError(self.generator.name)
        grounding = ground(question, result.text, [PassageText(s.n, s.hit.text) for s in sources])
        generate_s = timings.get("generate_ms", 0.0) / 1000
        if result.completion_tokens and generate_s > 0:
            timings = {**timings, "tokens_per_s": result.completion_tokens / generate_s}
        return Answer(
            answer=grounding.answer,
            sources=sources,
            cited=grounding.cited,
            finish_reason=result.finish_reason,
            timings=timings,
            grounded=grounding.grounded,
            refusal=grounding.refusal,
            highlights=grounding.highlights,
            relevance=relevance,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            question=question,
        )

    def answer(
        self,
        question: str,
        collection: str,
        top_k: int,
        mode: SearchMode | None = None,
        filters: SearchFilters | None = None,
    ) -> Answer:
        started = time.perf_counter()
        sources, relevance = self.retrieve(question, collection, top_k, mode, filters)
        retrieve_ms = (time.perf_counter() - started) * 1000
        if relevance < self.min_relevance:
            return self.refuse(question, sources, relevance, retrieve_ms)
        return self.answer_from(question, sources, relevance, {"retrieve_ms": retrieve_ms})

    def answer_from(
        self,
        question: str,
        sources: list[Source],
        relevance: float = 1.0,
        timings: dict[str, float] | None = None,
    ) -> Answer:
        """Generate and ground an answer from given passages (retrieved, or chosen by an evaluation); or
        extract it, where the model cannot read them (`AnswerStyle.extracts`)."""
        if self.style.extracts(question, sources):
            return self.extract(question, sources, relevance, timings or {})
        params = self.style.params(self.max_new_tokens, self.adapter, sources=sources)
        result = collect(self.generator.stream(build_messages(question, sources), params))
        result.text = result.text.strip()
        return self.conclude(question, sources, relevance, result, {**(timings or {}), **result.timings})


def no_answer_rate(
    pipeline: RagPipeline, questions: Sequence[str], collection: str, top_k: int, generate: bool = False
) -> float:
    """Share of `questions` that get the no-answer reply. Asked against a collection that does not hold
    their answers (the evaluation's wrong-collection check) it should be close to 1. Without `generate`
    only the relevance threshold is applied: a lower bound, and no model time."""
    if not questions:
        return 0.0
    refused = 0
    for question in questions:
        if generate:
            refused += not pipeline.answer(question, collection, top_k).grounded
        else:
            refused += pipeline.retrieve(question, collection, top_k)[1] < pipeline.min_relevance
    return refused / len(questions)

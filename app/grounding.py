"""Grounding: whether the passages are relevant enough to answer from, which passages an answer really
uses, and the no-answer reply when the documents do not hold the answer.

Small models rarely write `[n]` markers and sometimes invent them, so citations are verified rather than
trusted: an answer sentence is attributed to a passage when most of the content words it adds to the
question occur in that passage. A marker the model wrote counts only when its passage passes the same test.
An answer with no supported sentence is replaced by `NO_ANSWER`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from retriever.store import KnowledgeBase, SearchHit

NO_ANSWER = "The documents do not contain the answer to this question."
# Share of an answer sentence's new content words that a passage must contain to support it.
MIN_SUPPORT = 0.5
SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+|\n+")
WORD = re.compile(r"\w+", re.UNICODE)
CITATION = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")
REFUSAL = re.compile(r"\b(do(es)?n[o']t|do(es)? not) (contain|include|mention|say|provide)", re.IGNORECASE)
STOPWORDS = frozenset(
    """a an the and or but if of to in on at by for with from as into about over after before between
    is are was were be been being am do does did done has have had having it its itself they them their
    this that these those there here he him his she her we us our you your i me my what which who whom
    whose when where why how not no nor so than too very can could will would shall should may might must
    also just only any all each both few more most other some such own same then once again further
    answer question passage passages document documents according based""".split()
)


@dataclass(frozen=True)
class PassageText:
    """What grounding needs of a source: its number and text."""

    n: int
    text: str


@dataclass
class Grounding:
    answer: str
    cited: list[int]
    # n -> (start, end) character span inside that passage's text that best supports the answer.
    highlights: dict[int, tuple[int, int]] = field(default_factory=dict)
    grounded: bool = True


def content_words(text: str) -> set[str]:
    words = set()
    for word in WORD.findall(text.lower()):
        if word in STOPWORDS or (len(word) < 2 and not word.isdigit()):
            continue
        # A plural and its singular are the same evidence.
        words.add(word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word)
    return words


def sentence_spans(text: str) -> list[tuple[int, int]]:
    spans = []
    start = 0
    for match in SENTENCE_END.finditer(text):
        if text[start : match.start()].strip():
            spans.append((start, match.start()))
        start = match.end()
    if text[start:].strip():
        spans.append((start, len(text)))
    return spans


def best_relevance(kb: KnowledgeBase, question: str, hits: Sequence[SearchHit]) -> float:
    """Highest cosine similarity between the question and a passage, whatever ranked the passages: dense,
    lexical and fused scores are not comparable with one threshold; this is. Dense and hybrid retrieval
    report it with each hit; after lexical retrieval it is measured here against the same stored vectors."""
    if not hits:
        return -1.0
    known = [hit.similarity for hit in hits if hit.similarity is not None]
    if len(known) == len(hits):
        return max(known)
    query = kb.embedder.embed_query(kb.embedder.truncate(question))
    measured = kb.hits([(hit.chunk_id, hit.score) for hit in hits], query)
    return max((hit.similarity for hit in measured if hit.similarity is not None), default=-1.0)


def parse_citations(answer: str, source_count: int) -> list[int]:
    """Numbers cited as [n] or [n, m] that exist among the sources, in order of first appearance.
    An invented number (e.g. [7] with five sources) is dropped."""
    cited: list[int] = []
    for match in CITATION.finditer(answer):
        for number in (int(part) for part in match.group(1).split(",")):
            if 1 <= number <= source_count and number not in cited:
                cited.append(number)
    return cited


def _best_sentence(words: set[str], text: str) -> tuple[int, int] | None:
    best: tuple[int, tuple[int, int]] | None = None
    for start, end in sentence_spans(text):
        overlap = len(words & content_words(text[start:end]))
        if overlap and (best is None or overlap > best[0]):
            best = (overlap, (start, end))
    return best[1] if best else None


def ground(question: str, answer: str, passages: Sequence[PassageText]) -> Grounding:
    """Verified citations for `answer` and the supporting span of each cited passage; the no-answer reply
    when no sentence of the answer is supported (or the model itself says the documents lack it)."""
    text = answer.strip()
    if not text or REFUSAL.search(text):
        return Grounding(NO_ANSWER, [], {}, grounded=False)
    asked = content_words(question)
    passage_words = {p.n: content_words(p.text) for p in passages}
    by_number = {p.n: p for p in passages}
    cited: list[int] = []
    highlights: dict[int, tuple[int, int]] = {}
    for start, end in sentence_spans(text):
        sentence = text[start:end]
        new = content_words(CITATION.sub(" ", sentence)) - asked
        if not new:
            continue  # a sentence that only restates the question claims nothing
        support = {n: len(new & words) / len(new) for n, words in passage_words.items()}
        marked = parse_citations(sentence, max(by_number, default=0))
        supported = [n for n in marked if support.get(n, 0.0) >= MIN_SUPPORT]
        if not supported and support:
            best = max(support, key=lambda n: (support[n], -n))
            if support[best] >= MIN_SUPPORT:
                supported = [best]
        for n in supported:
            if n not in cited:
                cited.append(n)
            if n not in highlights:
                span = _best_sentence(new, by_number[n].text)
                if span is not None:
                    highlights[n] = span
    if not cited:
        return Grounding(NO_ANSWER, [], {}, grounded=False)
    return Grounding(text, cited, highlights, grounded=True)


def calibrate_threshold(answerable: Sequence[float], unanswerable: Sequence[float]) -> float:
    """The relevance threshold that best separates questions the collection answers from questions asked
    against the wrong collection (maximises balanced accuracy; midpoint between neighbouring scores)."""
    scores = sorted({*answerable, *unanswerable})
    candidates = [(a + b) / 2 for a, b in zip(scores, scores[1:], strict=False)] or scores

    def balanced_accuracy(threshold: float) -> float:
        kept = sum(s >= threshold for s in answerable) / max(len(answerable), 1)
        refused = sum(s < threshold for s in unanswerable) / max(len(unanswerable), 1)
        return (kept + refused) / 2

    return max(candidates, key=balanced_accuracy)

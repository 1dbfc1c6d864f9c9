"""Answer quality for `archivist eval --generate`: the LLM's answers scored with SQuAD's exact match and F1,
and by whether they hold a gold answer at all (which compares an extracted sentence with a short span), once
per answering setup (the base model, and each served LoRA adapter), all in the same run.

Three views of the same questions:
* end to end: hybrid retrieval of the configured top-k, the relevance gate, generation and grounding, as the
  service answers; the share of these answerable questions that get the no-answer reply is "refused",
  split by its cause (`app.rag.grounding.Refusal`): the relevance gate, the model's own reply, a degenerate
  reply, or an answer no passage supports;
* gold passage + 2 distractors: the passage that holds the answer among two retrieved ones that do not, at
  a random position (`app.quality.rag_examples`), which measures reading apart from retrieval;
* wrong collection: the same questions, retrieval restricted to the other articles, where the no-answer
  reply is the right one ("refused" should be close to 1).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import get_args

import numpy as np

from app.quality.evaluation import COLLECTION, Question, exact_match, f1_score, holds_answer
from app.quality.rag_examples import build_examples
from app.rag.grounding import CITATION, Refusal
from app.rag.pipeline import Answer, RagPipeline
from retriever.filters import SearchFilters
from retriever.store import KnowledgeBase

ROWS = (
    "exact_match", "f1", "holds", "refused", "gold_exact_match", "gold_f1", "wrong_refused",
    "seconds_per_answer",
)  # fmt: skip
CAUSES = get_args(Refusal)


def prediction(answer: Answer) -> str:
    return CITATION.sub("", answer.answer).strip()


def evaluate_answers(
    pipeline: RagPipeline,
    kb: KnowledgeBase,
    documents: dict[int, int],
    questions: Sequence[Question],
    top_k: int,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """The scores of one answering setup (`pipeline`, with its adapter) on `questions`."""
    em, f1, holds, refused, seconds = [], [], [], [], []
    causes: list[str | None] = []
    for number, question in enumerate(questions, start=1):
        started = time.perf_counter()
        answer = pipeline.answer(question.text, COLLECTION, top_k, mode="hybrid")
        seconds.append(time.perf_counter() - started)
        em.append(exact_match(prediction(answer), question.answers))
        f1.append(f1_score(prediction(answer), question.answers))
        holds.append(answer.grounded and holds_answer(prediction(answer), question.answers))
        refused.append(not answer.grounded)
        causes.append(answer.refusal)
        if progress is not None:
            progress(number)
    gold_em, gold_f1 = [], []
    for example in build_examples(kb, documents, questions, len(questions), random.Random(seed), (3,), 0.0):
        answer = pipeline.answer_from(example.question, example.sources)
        gold_em.append(exact_match(prediction(answer), example.answers))
        gold_f1.append(f1_score(prediction(answer), example.answers))
    wrong = []
    for question in questions:
        others = tuple(d for a, d in documents.items() if a != question.article)
        answer = pipeline.answer(
            question.text, COLLECTION, top_k, "hybrid", SearchFilters(document_ids=others)
        )
        wrong.append(not answer.grounded)

    def mean(values: Sequence[float | bool]) -> float:
        return float(np.mean(values)) if len(values) else 0.0

    return {
        "questions": len(questions),
        "exact_match": mean(em),
        "f1": mean(f1),
        "holds": mean(holds),
        "refused": mean(refused),
        "gold_questions": len(gold_em),
        "gold_exact_match": mean(gold_em),
        "gold_f1": mean(gold_f1),
        "wrong_refused": mean(wrong),
        "seconds_per_answer": mean(seconds),
        **{f"refused_{cause}": mean([found == cause for found in causes]) for cause in CAUSES},
    }


def answers_table(llm: str, generation: dict[str, dict[str, float]]) -> list[str]:
    """Markdown rows, one per answering setup."""
    lines = [
        f"| LLM {llm} | questions | EM | F1 | holds the answer | refused | gold+2 EM | gold+2 F1 "
        "| wrong collection refused | s/answer |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for setup, scores in generation.items():
        cells = [
            f"{scores[row]:.3f}" if row != "seconds_per_answer" else f"{scores[row]:.1f}" for row in ROWS
        ]
        lines.append(f"| {setup} | {scores['questions']:.0f} | " + " | ".join(cells) + " |")
    lines += ["", "Refused answerable questions by cause (shares of all questions):", ""]
    lines += ["| setup | " + " | ".join(CAUSES) + " |", "|---" * (len(CAUSES) + 1) + "|"]
    for setup, scores in generation.items():
        shares = [f"{scores.get(f'refused_{cause}', 0.0):.3f}" for cause in CAUSES]
        lines.append(f"| {setup} | " + " | ".join(shares) + " |")
    return lines

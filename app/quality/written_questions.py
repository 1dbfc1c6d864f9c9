"""Questions written over the paragraphs of a SQuAD-format file and kept apart from it, for fine-tuning.

A SQuAD file holds a handful of crowd questions per paragraph; a small model learns to read from more. A
written-questions file adds questions of one's own without copying the paragraphs: each question names its
article (`title`), the paragraph (its index in the article) and the answer, a span of that paragraph at
`answer_start`. `archivist finetune --questions FILE` trains on these instead of the training articles' own
questions; the validation articles keep theirs, and a question written over one of them is an error (they
must never be trained on). The format (JSON):

    {"about": "...", "squad": "squad-v1.1-dev-a.json",
     "questions": [{"title": "Warsaw", "paragraph": 3, "question": "...", "answer": "...",
                    "answer_start": 120}, ...]}
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class WrittenQuestionsError(ValueError):
    """The written-questions file is unusable or does not match the SQuAD file's paragraphs."""


@dataclass(frozen=True)
class WrittenQuestion:
    title: str
    paragraph: int
    question: str
    answer: str
    answer_start: int


FIELDS = {"title": str, "paragraph": int, "question": str, "answer": str, "answer_start": int}


def load_written_questions(path: Path) -> list[WrittenQuestion]:
    """The file's questions; an unreadable file, or an item missing a field or with one of the wrong type,
    is an error naming the file, the item and the field."""
    try:
        items = json.loads(path.read_text(encoding="utf-8"))["questions"]
        if not isinstance(items, list):
            raise TypeError("'questions' is not a list")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise WrittenQuestionsError(f"{path} is not a written-questions file ({error})") from error
    questions = []
    for number, item in enumerate(items):
        for name, kind in FIELDS.items():
            value = item.get(name) if isinstance(item, dict) else None
            if not isinstance(value, kind) or isinstance(value, bool) or value == "":
                raise WrittenQuestionsError(f"{path}: question {number}: {name!r} must be a non-empty "
                                            f"{kind.__name__}")  # fmt: skip
        questions.append(WrittenQuestion(**{name: item[name] for name in FIELDS}))
    return questions


def with_written_questions(
    articles: Sequence[dict[str, Any]], written: Sequence[WrittenQuestion], train_ids: Collection[int]
) -> list[dict[str, Any]]:
    """The SQuAD articles with the training articles' questions replaced by the `written` ones (in their
    order, paragraph by paragraph; ids `w<article>-<paragraph>-<n>`) and the other articles unchanged. A
    question of an unknown article or paragraph, of a validation article, or whose answer is not the
    paragraph's text at `answer_start` is an error naming it."""
    by_title = {str(article["title"]): index for index, article in enumerate(articles)}
    written_for: dict[tuple[int, int], list[WrittenQuestion]] = {}
    for number, question in enumerate(written):
        where = f"written question {number} ({question.question!r})"
        index = by_title.get(question.title)
        if index is None:
            raise WrittenQuestionsError(f"{where}: no article is titled {question.title!r}")
        if index not in train_ids:
            raise WrittenQuestionsError(f"{where}: {question.title!r} is a validation article")
        paragraphs = articles[index]["paragraphs"]
        if not 0 <= question.paragraph < len(paragraphs):
            raise WrittenQuestionsError(f"{where}: {question.title!r} has no paragraph {question.paragraph}")
        context = paragraphs[question.paragraph]["context"]
        end = question.answer_start + len(question.answer)
        if question.answer_start < 0 or context[question.answer_start : end] != question.answer:
            raise WrittenQuestionsError(f"{where}: the answer is not the paragraph's text at answer_start")
        written_for.setdefault((index, question.paragraph), []).append(question)
    merged = []
    for index, article in enumerate(articles):
        if index not in train_ids:
            merged.append(article)
            continue
        paragraphs = []
        for number, paragraph in enumerate(article["paragraphs"]):
            qas = [
                {
                    "id": f"w{index}-{number}-{n}",
                    "question": question.question,
                    "answers": [{"text": question.answer, "answer_start": question.answer_start}],
                }
                for n, question in enumerate(written_for.get((index, number), []))
            ]
            paragraphs.append({"context": paragraph["context"], "qas": qas})
        merged.append({"title": article["title"], "paragraphs": paragraphs})
    return merged

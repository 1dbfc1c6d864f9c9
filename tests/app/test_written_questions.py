"""Written questions for fine-tuning: merged into the training articles of a SQuAD file in place of their own,
never into a validation article; a file that does not match the paragraphs is an error naming the question."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from app.cli import cli
from app.quality.evaluation import load_squad, split_articles
from app.quality.written_questions import (
    WrittenQuestion,
    WrittenQuestionsError,
    load_written_questions,
    with_written_questions,
)
from tests.conftest import REPO_ROOT, shared_file

SHIPPED = REPO_ROOT / "app" / "trainsets" / "squad-dev-a-written.json"


def article(title: str, *contexts: str) -> dict[str, Any]:
    """An article whose every paragraph has one question of its own, answered by its first word."""
    return {
        "title": title,
        "paragraphs": [
            {
                "context": context,
                "qas": [
                    {
                        "id": f"{title}-{n}",
                        "question": "Which word opens it?",
                        "answers": [{"text": context.split()[0], "answer_start": 0}],
                    },
                ],
            }
            for n, context in enumerate(contexts)
        ],
    }


# Four articles: the fourth (index 3) is held out for validation.
ARTICLES = [
    article("Rivers", "The Rhine flows into the North Sea.", "The Danube passes four capitals."),
    article("Peaks", "Mont Blanc is 4,806 metres high."),
    article("Lakes", "Lake Geneva lies between France and Switzerland."),
    article("Glaciers", "The Aletsch Glacier is the largest in the Alps."),
]
TRAIN = split_articles(len(ARTICLES), "train")


def written(title: str, paragraph: int, question: str, answer: str) -> WrittenQuestion:
    context = next(a for a in ARTICLES if a["title"] == title)["paragraphs"][paragraph]["context"]
    return WrittenQuestion(title, paragraph, question, answer, context.find(answer))


def test_written_questions_replace_the_training_articles_own_and_leave_validation_alone() -> None:
    merged = with_written_questions(
        ARTICLES,
        [
            written("Rivers", 1, "How many capitals does the Danube pass?", "four"),
            written("Rivers", 1, "Which river passes four capitals?", "Danube"),
            written("Lakes", 0, "Which country lies on Lake Geneva besides France?", "Switzerland"),
        ],
        TRAIN,
    )
    rivers, peaks, lakes, glaciers = merged
    assert rivers["paragraphs"][0]["qas"] == []  # its own question is gone, none written for it
    assert rivers["paragraphs"][1]["qas"] == [
        {"id": "w0-1-0", "question": "How many capitals does the Danube pass?",
         "answers": [{"text": "four", "answer_start": 18}]},
        {"id": "w0-1-1", "question": "Which river passes four capitals?",
         "answers": [{"text": "Danube", "answer_start": 4}]},
    ]  # fmt: skip
    assert peaks["paragraphs"][0]["qas"] == []
    assert [q["id"] for q in lakes["paragraphs"][0]["qas"]] == ["w2-0-0"]
    assert [p["context"] for a in merged for p in a["paragraphs"]] == [
        p["context"] for a in ARTICLES for p in a["paragraphs"]
    ]
    assert glaciers == ARTICLES[3]  # the validation article keeps its own questions


@pytest.mark.parametrize(
    ("question", "said"),
    [
        (WrittenQuestion("Deserts", 0, "Which desert?", "Sahara", 0), "no article is titled 'Deserts'"),
        (WrittenQuestion("Glaciers", 0, "Which glacier?", "Aletsch Glacier", 4), "is a validation article"),
        (WrittenQuestion("Peaks", 1, "How high?", "4,806 metres", 12), "'Peaks' has no paragraph 1"),
        (WrittenQuestion("Peaks", 0, "How high?", "4,806 metres", 13), "not the paragraph's text at"),
        (WrittenQuestion("Peaks", 0, "How high?", "Mont", -5), "not the paragraph's text at"),
    ],
)
def test_a_question_that_does_not_match_the_paragraphs_is_named(question: WrittenQuestion, said: str) -> None:
    with pytest.raises(WrittenQuestionsError, match="written question 1") as raised:
        with_written_questions(ARTICLES, [written("Lakes", 0, "Where is it?", "France"), question], TRAIN)
    assert said in str(raised.value)


@pytest.mark.parametrize(
    ("content", "said"),
    [
        ("not json", "is not a written-questions file"),
        ('{"items": []}', "is not a written-questions file"),
        ('{"questions": {"title": "Peaks"}}', "is not a written-questions file"),
        ('{"questions": [{"title": "Peaks", "paragraph": 0, "question": "How high?", "answer": "4,806"}]}',
         "question 0: 'answer_start' must be a non-empty int"),
        ('{"questions": [{"title": "Peaks", "paragraph": "0", "question": "How high?", "answer": "4,806", '
         '"answer_start": 13}]}', "question 0: 'paragraph' must be a non-empty int"),
        ('{"questions": [7]}', "question 0: 'title' must be a non-empty str"),
    ],
)  # fmt: skip
def test_an_unusable_file_is_named_with_the_item_and_field_at_fault(
    tmp_path: Path, content: str, said: str
) -> None:
    path = tmp_path / "written.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(WrittenQuestionsError) as raised:
        load_written_questions(path)
    assert said in str(raised.value) and str(path) in str(raised.value)


def test_finetune_refuses_written_questions_that_do_not_match_and_writes_nothing(tmp_path: Path) -> None:
    squad = tmp_path / "squad.json"
    squad.write_text(json.dumps({"data": ARTICLES}), encoding="utf-8")
    questions = tmp_path / "written.json"
    item = {"title": "Glaciers", "paragraph": 0, "question": "Which glacier?", "answer": "Aletsch"}
    item["answer_start"] = 4
    questions.write_text(json.dumps({"questions": [item]}), encoding="utf-8")
    output = tmp_path / "adapter"
    arguments = ["finetune", str(squad), "--output", str(output), "--questions", str(questions)]
    result = CliRunner().invoke(cli, arguments)
    said = " ".join(result.output.split())  # rich wraps long lines
    refused = "error: written question 0 ('Which glacier?'): 'Glaciers' is a validation article"
    assert result.exit_code == 1 and refused in said, said
    assert not output.exists()


def test_the_shipped_written_questions_match_dev_a_and_stay_off_its_validation_articles() -> None:
    articles = load_squad(shared_file("squad/squad-v1.1-dev-a.json"))
    train = split_articles(len(articles), "train")
    merged = with_written_questions(articles, load_written_questions(SHIPPED), train)  # raises on a mismatch
    per_article = [sum(len(p["qas"]) for p in a["paragraphs"]) for a in merged]
    assert all(per_article[i] >= 2 * len(articles[i]["paragraphs"]) for i in train)  # about three a paragraph
    for i in train:  # no written question repeats one of its paragraph's own
        for own, new in zip(articles[i]["paragraphs"], merged[i]["paragraphs"], strict=True):
            asked = {q["question"].strip().lower() for q in own["qas"]}
            assert not asked & {q["question"].strip().lower() for q in new["qas"]}, own["context"][:80]

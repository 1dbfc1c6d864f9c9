"""`archivist eval` on question sets of the archivist-qa/1 format: the Chinese set itself (its evidence is
really in the notes), hits and keywords through cleaning, and a whole run over one of the notes."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from app.quality.evaluation import EvaluationError, GoldSpan
from app.quality.evaluation_qa import (
    ALL,
    evidence_spans,
    has_keyword,
    hit_rank,
    is_qa_set,
    load_qa_set,
    qa_markdown_table,
    run_qa_evaluation,
)
from app.settings import Settings
from ingest.cleaning import clean_text
from retriever.records import SearchHit
from tests.conftest import REPO_ROOT, shared_file

CHINESE_SET = REPO_ROOT / "app" / "evalsets" / "zh-llm-notes.json"


def test_the_chinese_set_has_literal_and_paraphrased_halves() -> None:
    data, questions = load_qa_set(CHINESE_SET)
    kinds = Counter(question.kind for question in questions)
    assert data["language"] == "zh" and is_qa_set(CHINESE_SET)
    assert kinds["literal"] == kinds["paraphrased"] >= 20 and kinds["literal"] + kinds["paraphrased"] >= 40
    assert len({question.id for question in questions}) == len(questions)


def test_every_evidence_is_in_its_document() -> None:
    """Each evidence string occurs in the raw note, and once cleaned in the cleaned note (what chunks are
    cut from), so that retrieval can be scored against it."""
    folder = shared_file("zh")
    _, questions = load_qa_set(CHINESE_SET)
    for question in questions:
        assert question.answers, question.id
        for document, evidence in question.evidence:
            raw = (folder / document).read_text(encoding="utf-8")
            assert evidence in raw, (question.id, document, evidence)
            assert evidence_spans(clean_text(raw), evidence), question.id


def hit(document_id: int, start: int, end: int) -> SearchHit:
    return SearchHit(start, document_id, "", "", 0, start, end, "", 1.0)


def test_hits_need_most_of_the_evidence_in_the_right_document() -> None:
    cleaned = clean_text("标题\n\n第一句，很长。FastText：Facebook开源的一个高效的文本分类和词向量工具。")
    [span] = evidence_spans(cleaned, "FastText：Facebook开源的")  # "：" is ":" once cleaned
    evidence = ((7, span),)
    middle = (span.start + span.end) // 2
    assert hit_rank([hit(8, 0, len(cleaned)), hit(7, 0, span.end)], evidence) == 2
    assert hit_rank([hit(7, middle - 1, len(cleaned))], evidence) == 1  # holds more than half of it
    assert hit_rank([hit(7, middle + 2, len(cleaned))], evidence) is None
    assert hit_rank([hit(7, 0, 3)], ((7, GoldSpan(0, 2)), (9, GoldSpan(5, 9)))) == 1


def test_keywords_match_through_case_width_and_spaces() -> None:
    assert has_keyword("答案是 ｆａｓｔＴｅｘｔ [1]", ["fasttext"])
    assert has_keyword("8 : 1 : 1", ["8:1:1"])
    assert not has_keyword("The documents do not contain the answer.", ["梯度消失"])


def test_a_set_with_evidence_not_in_its_document_is_refused(tmp_path: Path, settings: Settings) -> None:
    (tmp_path / "a.md").write_text("量化通过降低精度减少存储和计算开销。")
    qa = {"format": "archivist-qa/1", "documents": ["a.md"], "questions": []}
    qa["questions"] = [{"id": "q", "question": "?", "answers": ["x"], "document": "a.md", "evidence": "不在"}]
    path = tmp_path / "set.json"
    path.write_text(json.dumps(qa, ensure_ascii=False))
    with pytest.raises(EvaluationError, match="not in a.md"):
        run_qa_evaluation(settings, path, tmp_path)
    path.write_text(json.dumps({"data": []}))
    assert not is_qa_set(path)
    with pytest.raises(EvaluationError, match="archivist-qa/1"):
        load_qa_set(path)


def test_a_whole_run_over_one_note(tmp_path: Path, settings: Settings) -> None:
    """The set's questions on llm-notes-5.md against that note alone: every mode finds most of them."""
    folder = shared_file("zh")
    data = json.loads(CHINESE_SET.read_text(encoding="utf-8"))
    data["documents"] = ["llm-notes-5.md"]
    data["questions"] = [q for q in data["questions"] if q["document"] == "llm-notes-5.md"]
    path = tmp_path / "notes-5.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    steps: list[tuple[str, int, int]] = []
    report = run_qa_evaluation(settings, path, folder, progress=lambda *step: steps.append(step))
    assert report.documents == 1 and report.chunks > 5
    assert report.questions == {ALL: 5, "literal": 2, "paraphrased": 2, "cross-lingual": 1}
    assert steps[-1] == ("retrieval", 5, 5)
    assert set(report.hits) == {"dense", "lexical", "hybrid"}
    assert report.hits["hybrid"]["literal"] == 1.0 and report.hits["hybrid"][ALL] >= 0.8
    table = qa_markdown_table(report).splitlines()
    assert table[0] == (
        "| mode | hit@5 all (5) | hit@5 literal (2) | hit@5 paraphrased (2) | hit@5 cross-lingual (1) |"
    )
    assert table[4].startswith("| hybrid | ") and len(table) == 5

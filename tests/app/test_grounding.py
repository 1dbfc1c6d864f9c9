"""Grounding: verified citations, the no-answer reply, and the relevance threshold calibrated on SQuAD
questions asked against their own and against the wrong collection."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from app.grounding import NO_ANSWER, PassageText, best_relevance, calibrate_threshold, ground
from app.rag import RagPipeline, no_answer_rate
from app.settings import Settings
from ingest.pipeline import Ingestor, discover
from retriever.store import KnowledgeBase
from tests.conftest import REPO_ROOT, shared_file

ETNA = PassageText(1, "Mount Etna is an active volcano. It stands on the east coast of Sicily, in Italy.")
OWLS = PassageText(2, "Owls hunt at night. An owl can turn its head 270 degrees.")


def test_a_supported_sentence_is_cited_with_its_span() -> None:
    grounding = ground("Where is Mount Etna?", "Mount Etna is on the east coast of Sicily.", [ETNA, OWLS])
    assert grounding.grounded and grounding.cited == [1]
    start, end = grounding.highlights[1]
    assert ETNA.text[start:end] == "It stands on the east coast of Sicily, in Italy."


def test_markers_count_only_when_their_passage_supports_the_sentence() -> None:
    # The model cited [2] for a fact that is in passage 1: the citation moves to the passage with the fact.
    moved = ground("Where is Etna?", "Etna is in Sicily [2].", [ETNA, OWLS])
    assert moved.cited == [1]
    # An invented number is dropped; a correct one is kept.
    kept = ground("How far can owls turn their heads?", "270 degrees [2][7].", [ETNA, OWLS])
    assert kept.cited == [2]


def test_unsupported_or_refused_answers_become_the_no_answer_reply() -> None:
    invented = ground("Where is Etna?", "Etna is a famous Norwegian fjord near Bergen.", [ETNA, OWLS])
    assert not invented.grounded and invented.answer == NO_ANSWER and invented.cited == []
    restating = ground("Where is Mount Etna?", "Mount Etna is where Mount Etna is.", [ETNA])
    assert not restating.grounded
    refusal = ground("Who built it?", "The documents do not contain this information.", [ETNA])
    assert refusal.answer == NO_ANSWER
    assert ground("Where?", "   ", [ETNA]).answer == NO_ANSWER


def test_calibrated_threshold_separates_the_groups() -> None:
    assert 0.3 < calibrate_threshold([0.5, 0.6, 0.7], [0.1, 0.2, 0.3]) < 0.5
    # Overlapping groups: the threshold with the best balanced accuracy.
    assert calibrate_threshold([0.2, 0.6, 0.7], [0.1, 0.3, 0.25]) == pytest.approx(0.45)


def write_articles(folder: Path, articles: list[dict], paragraphs: int) -> list[str]:  # type: ignore[type-arg]
    """One file per paragraph; returns the first question of each."""
    folder.mkdir(parents=True)
    questions = []
    for article in articles:
        for number, paragraph in enumerate(article["paragraphs"][:paragraphs]):
            (folder / f"{article['title']}-{number}.txt").write_text(paragraph["context"])
            questions.append(paragraph["qas"][0]["question"])
    return questions


def test_relevance_threshold_on_squad(  # type: ignore[no-untyped-def]
    kb: KnowledgeBase, settings: Settings, generator, tmp_path: Path
) -> None:
    """SQuAD questions against their own articles keep their answer; against other articles (the hard
    wrong collection: same style, same source) or against Archivist's own docs they get the no-answer
    reply, by the relevance threshold alone (no generation)."""
    squad = json.loads(shared_file("squad/squad-v1.1-dev-a.json").read_text())["data"]
    ingestor = Ingestor(kb, settings.chunker_config())
    questions_a = write_articles(tmp_path / "a", squad[0:4:2], paragraphs=8)
    questions_b = write_articles(tmp_path / "b", squad[1:4:2], paragraphs=8)
    for name in ("a", "b"):
        ingestor.ingest_paths(discover([tmp_path / name]), name)
    ingestor.ingest_paths(discover([REPO_ROOT / "docs"]), "docs")
    pipeline = RagPipeline(kb, generator, 8, settings.min_relevance)

    def rate(questions: list[str], collection: str) -> float:
        return no_answer_rate(pipeline, questions, collection, 5)

    measured = {
        "answerable_kept": 1 - (rate(questions_a, "a") + rate(questions_b, "b")) / 2,
        "no_answer_other_articles": (rate(questions_a, "b") + rate(questions_b, "a")) / 2,
        "no_answer_docs": rate(questions_a + questions_b, "docs"),
    }
    assert measured["answerable_kept"] >= 0.9, measured
    assert measured["no_answer_other_articles"] >= 0.85, measured
    assert measured["no_answer_docs"] >= 0.9, measured


def test_relevance_is_the_same_measure_whatever_retrieved_the_passages(
    kb: KnowledgeBase, settings: Settings
) -> None:
    ingestor = Ingestor(kb, settings.chunker_config())
    folder = REPO_ROOT / "docs"
    ingestor.ingest_paths(discover([folder / "getting-started.md"]), "docs")
    question = "How do I install Archivist?"
    dense = kb.search(question, "docs", 1, "dense")
    assert dense[0].similarity is not None
    # Lexical retrieval reports no similarity: relevance measures it against the stored vectors.
    as_lexical = [replace(hit, similarity=None) for hit in dense]
    assert best_relevance(kb, question, as_lexical) == pytest.approx(dense[0].similarity, abs=1e-4)
    assert best_relevance(kb, question, []) == -1.0

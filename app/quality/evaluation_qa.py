"""`archivist eval` on a question set in the `archivist-qa/1` format: questions with short answers over a
folder of documents (e.g. app/evalsets/zh-llm-notes.json, over Chinese notes on language models). It owns
the format, retrieval hit@5 per mode and per kind of question and, with `generate`, the share of answers that
hold an accepted keyword and the share wrongly refused.

The format (JSON)::

    {"format": "archivist-qa/1", "language": "zh", "documents": ["a.md", ...],
     "questions": [{"id": "q1", "question": "...", "answers": ["keyword", ...], "document": "a.md",
                    "evidence": "exact text of a.md that holds the answer", "kind": "literal",
                    "alternatives": [{"document": "b.md", "evidence": "text of b.md that holds it too"}]}]}

`documents` are file names in the folder given to the run; each becomes one document of a throw-away
knowledge base built as `app.quality.evaluation` builds its own (the real ingest pipeline). `kind` groups
questions in the report: "literal" ones reuse the wording of the sentence that answers them, "paraphrased"
ones do not, "cross-lingual" ones are asked in another language than the documents'.

A question is a hit at rank r when the r-th retrieved chunk comes from its document and holds most of the
evidence (or of an alternative's): the evidence is located in the cleaned document text that chunks are cut
from (so cleaning, e.g. NFKC turning "，" into ",", does not matter) and must overlap the chunk by at least
half its length (so evidence cut by a chunk boundary counts for the chunk holding most of it).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.quality.evaluation import (
    COLLECTION,
    MAX_K,
    MODES,
    EvaluationError,
    GoldSpan,
    answer_styles,
    check_chunks,
    one_intra_op_thread,
    throwaway_knowledge_base,
)
from app.rag.grounding import NO_ANSWER
from app.rag.pipeline import RagPipeline
from app.settings import Settings
from ingest.cleaning import clean_text
from ingest.pipeline import Ingestor
from retriever.records import SearchHit
from retriever.store import KnowledgeBase

FORMAT = "archivist-qa/1"
HIT_AT = 5
ALL = "all"


@dataclass(frozen=True)
class QAQuestion:
    id: str
    text: str
    kind: str
    answers: tuple[str, ...]
    # (document, exact text of it that holds the answer): the main place first, then the alternatives.
    evidence: tuple[tuple[str, str], ...]


@dataclass
class QAReport:
    dataset: str
    language: str
    documents: int
    chunks: int
    questions: dict[str, int]  # per kind, and "all"
    ingest_seconds: float
    setup: dict[str, Any]
    hits: dict[str, dict[str, float]]  # mode -> kind (and "all") -> hit@5
    # answering style (`AnswerStyle.label`: "copied, CJK extracted", "copied", "free text") -> kind (and
    # "all") -> {"keyword": share of answers holding an accepted keyword, "refused": share answered
    # NO_ANSWER}; only with `generate`.
    generation: dict[str, dict[str, dict[str, float]]] | None = None
    # Per question: rank of its first hit per mode (None: not in the top MAX_K); per style, the answers.
    ranks: dict[str, dict[str, int | None]] = field(default_factory=dict, repr=False)
    answers: dict[str, dict[str, str]] = field(default_factory=dict, repr=False)


def is_qa_set(path: Path) -> bool:
    """Whether `path` is a JSON file in this format (rather than, say, a SQuAD file)."""
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def load_qa_set(path: Path) -> tuple[dict[str, Any], list[QAQuestion]]:
    """The set's header fields and its questions."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != FORMAT:
            raise ValueError(f"format is {data.get('format')!r}, not {FORMAT!r}")
        questions = [
            QAQuestion(
                id=str(q["id"]),
                text=q["question"],
                kind=q.get("kind", "literal"),
                answers=tuple(q["answers"]),
                evidence=tuple(
                    (place["document"], place["evidence"]) for place in [q, *q.get("alternatives", [])]
                ),
            )
            for q in data["questions"]
        ]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise EvaluationError(f"{path} is not an {FORMAT} question set ({error})") from error
    unknown = {document for q in questions for document, _ in q.evidence} - set(data.get("documents", []))
    if unknown:
        raise EvaluationError(f"{path}: questions name documents missing from 'documents': {sorted(unknown)}")
    return data, questions


def evidence_spans(cleaned: str, evidence: str) -> tuple[GoldSpan, ...]:
    """Every occurrence of the (cleaned) evidence in a cleaned document."""
    wanted = clean_text(evidence)
    spans = []
    start = cleaned.find(wanted)
    while start >= 0:
        spans.append(GoldSpan(start, start + len(wanted)))
        start = cleaned.find(wanted, start + 1)
    return tuple(spans)


Evidence = tuple[tuple[int, GoldSpan], ...]  # (document id, span in its cleaned text)


def hit_rank(hits: Sequence[SearchHit], evidence: Evidence) -> int | None:
    """1-based rank of the first hit that overlaps half an evidence span of its document or more."""
    for rank, hit in enumerate(hits, start=1):
        if any(
            hit.document_id == document_id
            and 2 * (min(hit.char_end, span.end) - max(hit.char_start, span.start)) >= span.end - span.start
            for document_id, span in evidence
        ):
            return rank
    return None


def build_qa_knowledge_base(
    kb: KnowledgeBase, ingestor: Ingestor, names: Sequence[str], folder: Path, questions: Sequence[QAQuestion]
) -> dict[str, Evidence]:
    """Ingest each document; returns the evidence of each question (by id) located in the stored text."""
    documents: dict[str, int] = {}
    cleaned: dict[str, str] = {}
    for name in names:
        path = folder / name
        if not path.is_file():
            raise EvaluationError(f"document {path} does not exist (pass the folder that holds {name})")
        result = ingestor.ingest_file(path, COLLECTION, source_path=f"qa/{name}")
        if result.document_id is None:
            raise EvaluationError(f"{name} was not ingested: {result.status} {result.reason}")
        documents[name] = result.document_id
        cleaned[name] = clean_text(path.read_text(encoding="utf-8"))
        check_chunks(kb, result.document_id, cleaned[name], name)
    located: dict[str, Evidence] = {}
    for question in questions:
        found: list[tuple[int, GoldSpan]] = []
        for name, text in question.evidence:
            spans = evidence_spans(cleaned[name], text)
            if not spans:
                raise EvaluationError(f"question {question.id}: its evidence {text!r} is not in {name}")
            found += [(documents[name], span) for span in spans]
        located[question.id] = tuple(found)
    return located


def shares(values: dict[str, float | bool], questions: Sequence[QAQuestion]) -> dict[str, float]:
    """Mean of a per-question value over all questions and over each kind."""
    groups: dict[str, list[float]] = {ALL: []}
    for question in questions:
        value = float(values[question.id])
        groups[ALL].append(value)
        groups.setdefault(question.kind, []).append(value)
    return {kind: sum(group) / len(group) for kind, group in groups.items() if group}


def normalized(text: str) -> str:
    """For keyword matching: cleaned (NFKC), case-folded, without whitespace."""
    return "".join(clean_text(text).casefold().split())


def has_keyword(answer: str, keywords: Sequence[str]) -> bool:
    text = normalized(answer)
    return any(normalized(keyword) in text for keyword in keywords)


def count_kinds(questions: Sequence[QAQuestion]) -> dict[str, int]:
    return {ALL: len(questions), **Counter(question.kind for question in questions)}


def retrieval_ranks(
    kb: KnowledgeBase,
    questions: Sequence[QAQuestion],
    evidence: dict[str, Evidence],
    progress: Callable[[int], None] | None = None,
) -> dict[str, dict[str, int | None]]:
    """Mode → question id → rank of its first hit (None: not in the top MAX_K). Each question is embedded
    once, by the collection's own embedder, for the dense and hybrid searches."""
    embedder = kb.embedder_for(COLLECTION)
    ranks: dict[str, dict[str, int | None]] = {mode: {} for mode in MODES}
    for number, question in enumerate(questions, start=1):
        vector = embedder.embed_query(embedder.truncate(question.text))
        for mode in MODES:
            hits = kb.search(
                question.text,
                COLLECTION,
                MAX_K,
                mode=mode,
                query_vector=vector if mode != "lexical" else None,
            )
            ranks[mode][question.id] = hit_rank(hits, evidence[question.id])
        if progress is not None:
            progress(number)
    return ranks


def answer_questions(
    pipeline: RagPipeline, questions: Sequence[QAQuestion], top_k: int, progress: Callable[[int], None] | None
) -> tuple[dict[str, str], dict[str, dict[str, float]]]:
    """The generated answer per question id (hybrid retrieval, relevance gate and grounding included, as
    the service answers), and per kind the share holding an accepted keyword and the share refused."""
    answers: dict[str, str] = {}
    for number, question in enumerate(questions, start=1):
        answers[question.id] = pipeline.answer(question.text, COLLECTION, top_k, mode="hybrid").answer
        if progress is not None:
            progress(number)
    keyword = shares({q.id: has_keyword(answers[q.id], q.answers) for q in questions}, questions)
    refused = shares({q.id: answers[q.id] == NO_ANSWER for q in questions}, questions)
    return answers, {kind: {"keyword": keyword[kind], "refused": refused[kind]} for kind in keyword}


def run_qa_evaluation(
    settings: Settings,
    path: Path,
    documents_dir: Path,
    generate: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
    free_text: bool = False,
) -> QAReport:
    """Build a throw-away knowledge base from the set's documents in `documents_dir`, then measure the
    question set `path`: retrieval always, generated answers with `generate`. `progress(stage, done,
    total)` is called after each question of each stage ("retrieval", "generation")."""
    from app.services import load_generator

    data, questions = load_qa_set(path)

    def step(stage: str) -> Callable[[int], None] | None:
        return None if progress is None else lambda done: progress(stage, done, len(questions))

    with throwaway_knowledge_base(settings, "archivist-eval-qa-") as (kb, eval_settings, _):
        started = time.perf_counter()
        ingestor = Ingestor(kb, eval_settings.chunker_config(), eval_settings.ingest_config())
        evidence = build_qa_knowledge_base(kb, ingestor, data["documents"], documents_dir, questions)
        ingest_seconds = time.perf_counter() - started
        with one_intra_op_thread():
            ranks = retrieval_ranks(kb, questions, evidence, step("retrieval"))
        hits = {
            mode: shares({q: rank is not None and rank <= HIT_AT for q, rank in found.items()}, questions)
            for mode, found in ranks.items()
        }
        generation: dict[str, dict[str, dict[str, float]]] | None = None
        answers: dict[str, dict[str, str]] = {}
        llm = None
        if generate:
            generator = load_generator(eval_settings)
            llm = generator.name
            generation = {}
            for style, _ in answer_styles(eval_settings, free_text, cjk=data.get("language") == "zh"):
                pipeline = RagPipeline(
                    kb, generator, eval_settings.max_new_tokens, eval_settings.min_relevance, style=style
                )
                label = style.label
                answers[label], generation[label] = answer_questions(
                    pipeline, questions, eval_settings.top_k, step(f"generation, {label}")
                )
        setup = {
            "embedder": kb.embedder_for(COLLECTION).name,
            "llm": llm,
            "chunk_tokens": eval_settings.chunk_tokens,
            "fusion": kb.config.fusion,
            "top_k": eval_settings.top_k,
            "min_relevance": eval_settings.min_relevance,
        }
        chunks = sum(info.chunk_count for info in kb.list_documents(COLLECTION))
    return QAReport(
        dataset=path.name,
        language=str(data.get("language", "")),
        documents=len(data["documents"]),
        chunks=chunks,
        questions=count_kinds(questions),
        ingest_seconds=ingest_seconds,
        setup=setup,
        hits=hits,
        generation=generation,
        ranks=ranks,
        answers=answers,
    )


def qa_markdown_table(report: QAReport) -> str:
    """hit@5 per retrieval mode (rows) and kind of question (columns); with generation, a second table of
    keyword hits and refusals per kind."""
    kinds = list(report.questions)
    header = ["mode", *(f"hit@{HIT_AT} {kind} ({report.questions[kind]})" for kind in kinds)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for mode, found in report.hits.items():
        lines.append("| " + " | ".join([mode, *(f"{found[kind]:.3f}" for kind in kinds)]) + " |")
    if report.generation:
        lines += [
            "",
            f"| {report.setup['llm']} (hybrid top-{report.setup['top_k']}) | " + " | ".join(kinds) + " |",
            "|" + "---|" * (len(kinds) + 1),
        ]
        for label, scores in report.generation.items():
            for metric, what in (("keyword", "answer holds an accepted keyword"), ("refused", "refused")):
                cells = " | ".join(f"{scores[kind][metric]:.3f}" for kind in kinds)
                lines.append(f"| {what}, {label} | {cells} |")
    return "\n".join(lines)

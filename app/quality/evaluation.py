"""`archivist eval`: retrieval quality and latency on a SQuAD-format file, optionally answer quality.

A fresh knowledge base is built in a temporary folder: every article becomes one document (its paragraphs
joined by blank lines) and goes through the real ingest pipeline (cleaning, chunking, embedding), so the
numbers measure the default pipeline, chunking included. A question counts as answered at rank r when the
r-th retrieved chunk belongs to the question's article and contains one of its gold answer spans at the gold
location (the SQuAD `answer_start`, mapped through the cleaning into the stored text), not merely the same
words somewhere else.

Reported per retrieval mode: recall@1/5/10/20, MRR@10 and retrieval latency percentiles (query embedding
included; each question is embedded once and that time is added to dense and hybrid), measured with one
torch intra-op thread: a single short query gains nothing from more, and on a busy machine extra threads
spin-wait (two threads made MiniLM's query embedding ~10x slower on a shared 2-core machine). With
`generate`, the configured LLM answers from hybrid retrieval and is scored with SQuAD's exact match and F1.
"""

from __future__ import annotations

import collections
import json
import random
import re
import string
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
from sqlalchemy import select

from app.rag.extraction import asks_how_or_why
from app.rag.pipeline import AnswerStyle, RagPipeline
from app.settings import Settings
from ingest.cleaning import clean_text
from ingest.pipeline import Ingestor
from retriever.config import SearchMode
from retriever.models import Chunk
from retriever.store import KnowledgeBase

MODES: tuple[SearchMode, ...] = ("dense", "lexical", "hybrid")
RECALL_AT = (1, 5, 10, 20)
MAX_K = 20
MRR_AT = 10
COLLECTION = "eval"
# Appended to a text prefix before cleaning it, so that cleaning treats the prefix's end as the middle of
# the text (collapsing a run of spaces rather than stripping it); NFKC leaves it unchanged.
SENTINEL = "\u00a7"


class EvaluationError(ValueError):
    """The SQuAD file is unusable, or the ingest pipeline no longer stores what the harness expects."""


VALIDATION_EVERY = 4  # every 4th article (by position in the file) is held out for validation
Split = Literal["all", "train", "validation"]


def split_name(value: str) -> Split:
    if value not in ("all", "train", "validation"):
        raise EvaluationError(f"split must be all, train or validation, not {value!r}")
    return cast(Split, value)


def split_articles(count: int, split: Split) -> set[int]:
    """Indexes of the articles in `split`: fine-tuning trains on "train" and is validated on "validation",
    a fixed split by article so that no validation question, nor its article, is ever trained on."""
    if split == "all":
        return set(range(count))
    held_out = {i for i in range(count) if i % VALIDATION_EVERY == VALIDATION_EVERY - 1}
    return held_out if split == "validation" else set(range(count)) - held_out


@dataclass(frozen=True)
class GoldSpan:
    start: int  # in the cleaned document text the chunks were cut from
    end: int


@dataclass(frozen=True)
class Question:
    id: str
    text: str
    article: int
    answers: tuple[str, ...]
    spans: tuple[GoldSpan, ...]


@dataclass
class ModeResult:
    recall: dict[int, float]
    mrr_at_10: float
    latency_p50_ms: float
    latency_p95_ms: float
    latencies_ms: list[float] = field(repr=False)
    recall_curve: list[float] = field(repr=False)  # recall@1..MAX_K


@dataclass
class Report:
    dataset: str
    articles: int
    chunks: int
    questions: int
    unmapped_answers: int
    ingest_seconds: float
    setup: dict[str, Any]
    modes: dict[str, ModeResult]
    generation: dict[str, dict[str, float]] | None = None  # answering setup -> scores


# -- building the knowledge base -------------------------------------------------------------------------


def load_squad(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        articles = data["data"]
        articles[0]["paragraphs"][0]["qas"]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as error:
        raise EvaluationError(f"{path} is not a SQuAD-format file ({error})") from error
    return list(articles)


def cleaned_offset(paragraph: str, position: int) -> int:
    """Where `paragraph[position]` lands in `clean_text(paragraph)`."""
    return len(clean_text(paragraph[:position] + SENTINEL)) - len(SENTINEL)


def article_questions(article: dict[str, Any], index: int, cleaned: str) -> tuple[list[Question], int]:
    """The article's questions with their gold spans mapped into `cleaned`; also the count of answers
    that could not be mapped (they are left out of the spans and reported)."""
    questions: list[Question] = []
    unmapped = 0
    cursor = 0
    for paragraph in article["paragraphs"]:
        context = paragraph["context"]
        piece = clean_text(context)
        base = cleaned.find(piece, cursor)
        if base < 0:
            raise EvaluationError(f"paragraph of {article['title']!r} not found in its cleaned article")
        cursor = base + len(piece)
        for qa in paragraph["qas"]:
            spans: list[GoldSpan] = []
            for answer in qa["answers"]:
                wanted = clean_text(answer["text"])
                start = base + cleaned_offset(context, answer["answer_start"])
                if cleaned[start : start + len(wanted)] != wanted:
                    unmapped += 1
                    continue
                span = GoldSpan(start, start + len(wanted))
                if span not in spans:
                    spans.append(span)
            if spans:
                answers = tuple(a["text"] for a in qa["answers"])
                questions.append(Question(qa["id"], qa["question"], index, answers, tuple(spans)))
    return questions, unmapped


def build_knowledge_base(
    kb: KnowledgeBase, ingestor: Ingestor, articles: Sequence[dict[str, Any]], workdir: Path
) -> tuple[dict[int, int], list[Question], int]:
    """Ingest every article as one document; returns (article → document id, questions, unmapped)."""
    documents: dict[int, int] = {}
    questions: list[Question] = []
    unmapped = 0
    for index, article in enumerate(articles):
        raw = "\n\n".join(paragraph["context"] for paragraph in article["paragraphs"])
        path = workdir / f"article-{index}.txt"
        path.write_text(raw, encoding="utf-8")
        title = str(article["title"]).replace("_", " ")
        result = ingestor.ingest_file(path, COLLECTION, source_path=f"squad/{index}", title=title)
        if result.document_id is None:
            raise EvaluationError(f"article {title!r} was not ingested: {result.status} {result.reason}")
        documents[index] = result.document_id
        cleaned = clean_text(raw)
        check_chunks(kb, result.document_id, cleaned, title)
        found, missed = article_questions(article, index, cleaned)
        questions.extend(found)
        unmapped += missed
    return documents, questions, unmapped


def check_chunks(kb: KnowledgeBase, document_id: int, cleaned: str, title: str) -> None:
    """Gold spans are located in `clean_text(article)`: the stored chunks must be slices of that text."""
    with kb.db.session() as session:
        rows = session.execute(
            select(Chunk.text, Chunk.char_start, Chunk.char_end).where(Chunk.document_id == document_id)
        ).all()
    for text, start, end in rows:
        if cleaned[start:end] != text:
            raise EvaluationError(
                f"a chunk of {title!r} is not the slice [{start}:{end}] of clean_text(article): the ingest "
                "pipeline changed how it cleans or cuts text; update app/quality/evaluation.py to match"
            )


# -- retrieval --------------------------------------------------------------------------------------------


def first_hit_rank(hits: Sequence[Any], document_id: int, spans: Sequence[GoldSpan]) -> int | None:
    """1-based rank of the first hit that contains a gold span of the right document."""
    for rank, hit in enumerate(hits, start=1):
        if hit.document_id == document_id and any(
            hit.char_start <= span.start and span.end <= hit.char_end for span in spans
        ):
            return rank
    return None


@contextmanager
def one_intra_op_thread() -> Iterator[None]:
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def evaluate_retrieval(
    kb: KnowledgeBase,
    documents: dict[int, int],
    questions: Sequence[Question],
    modes: Sequence[SearchMode] = MODES,
    progress: Callable[[int], None] | None = None,
) -> dict[str, ModeResult]:
    ranks: dict[str, list[int | None]] = {mode: [] for mode in modes}
    latencies: dict[str, list[float]] = {mode: [] for mode in modes}
    for number, question in enumerate(questions, start=1):
        started = time.perf_counter()
        embedder = kb.embedder_for(COLLECTION)  # the collection's own: multilingual for a CJK collection
        vector = embedder.embed_query(embedder.truncate(question.text))
        embed_ms = (time.perf_counter() - started) * 1000
        for mode in modes:
            started = time.perf_counter()
            hits = kb.search(
                question.text,
                COLLECTION,
                MAX_K,
                mode=mode,
                query_vector=vector if mode != "lexical" else None,
            )
            elapsed = (time.perf_counter() - started) * 1000 + (embed_ms if mode != "lexical" else 0.0)
            latencies[mode].append(elapsed)
            ranks[mode].append(first_hit_rank(hits, documents[question.article], question.spans))
        if progress is not None:
            progress(number)
    return {mode: summarize(ranks[mode], latencies[mode]) for mode in modes}


def summarize(ranks: Sequence[int | None], latencies: Sequence[float]) -> ModeResult:
    found = np.asarray([rank if rank is not None else MAX_K + 1 for rank in ranks])
    curve = [float(np.mean(found <= k)) for k in range(1, MAX_K + 1)]
    reciprocal = np.where(found <= MRR_AT, 1.0 / found, 0.0)
    return ModeResult(
        recall={k: curve[k - 1] for k in RECALL_AT},
        mrr_at_10=float(reciprocal.mean()),
        latency_p50_ms=float(np.percentile(latencies, 50)),
        latency_p95_ms=float(np.percentile(latencies, 95)),
        latencies_ms=list(latencies),
        recall_curve=curve,
    )


# -- answers ----------------------------------------------------------------------------------------------


def normalize_answer(text: str) -> str:
    """SQuAD v1.1's normalization: lowercase, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, truths: Sequence[str]) -> float:
    return float(any(normalize_answer(prediction) == normalize_answer(truth) for truth in truths))


def holds_answer(prediction: str, truths: Sequence[str]) -> float:
    """Whether the prediction contains one of the answers as whole words (normalized): the measure that
    compares a sentence with a short span, which exact match and F1 score by length as much as by content."""
    predicted = f" {normalize_answer(prediction)} "
    return float(any(gold and f" {gold} " in predicted for gold in map(normalize_answer, truths)))


def f1_score(prediction: str, truths: Sequence[str]) -> float:
    def f1(truth: str) -> float:
        predicted, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
        common = sum((collections.Counter(predicted) & collections.Counter(gold)).values())
        if common == 0:
            return 0.0
        precision, recall = common / len(predicted), common / len(gold)
        return 2 * precision * recall / (precision + recall)

    return max(f1(truth) for truth in truths)


@contextmanager
def throwaway_knowledge_base(
    settings: Settings, prefix: str
) -> Iterator[tuple[KnowledgeBase, Settings, Path]]:
    """A fresh knowledge base in a temporary folder (SQLite, and with the Milvus backend a Milvus Lite file
    there, whatever the settings say: a shared database or Milvus is never written to), the settings it was
    built from, and an empty folder for the files to ingest; all deleted afterwards."""
    from app.services import load_knowledge_base

    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        work = Path(tmp)
        (work / "files").mkdir()
        scoped = settings.model_copy(
            update={"data_dir": work / "data", "database_url": None, "milvus_uri": None}
        )
        kb = load_knowledge_base(scoped)
        try:
            yield kb, scoped, work / "files"
        finally:
            kb.close()


# -- the whole run ----------------------------------------------------------------------------------------


def answer_styles(settings: Settings, free_text: bool, cjk: bool = False) -> list[tuple[AnswerStyle, str]]:
    """The answering styles to score, each with the suffix of its row label: the configured one and, with
    `free_text`, the model's own answers to compare with: where answers are extracted (a CJK set, how and
    why questions), the same generated by the model; where answers copy from the passages, the model
    writing freely."""
    style = AnswerStyle.of(settings)
    styles = [(style, "")]
    if not free_text:
        return styles
    generated = replace(style, extract_cjk=style.extract_cjk and not cjk, extract_how_why=False)
    if generated != style:
        styles.append((generated, " (generated)"))
    if style.copy_spans:
        styles.append((replace(generated, copy_spans=False), " (free text)"))
    return styles


def run_evaluation(
    settings: Settings,
    squad: Path,
    sample: int | None = None,
    generate: bool = False,
    seed: int = 0,
    progress: Callable[[str, int, int], None] | None = None,
    split: Split = "all",
    base: bool = True,
    free_text: bool = False,
    how_why: bool = False,
) -> Report:
    """Retrieval (and with `generate`, answers: `app.quality.answer_eval`) on the articles of `split`; the
    answers of the base model (unless not `base`) and of every adapter the generator serves, in the same run,
    and with `free_text` each of them again generated and not copied from the passages (`answer_styles`);
    with `how_why`, only the questions that ask how or why (`app.rag.extraction.asks_how_or_why`)."""
    from app.quality.answer_eval import evaluate_answers
    from app.services import load_generator
    from llm.base import NO_ADAPTER, served_adapters

    every = load_squad(squad)
    articles = [every[i] for i in sorted(split_articles(len(every), split))]
    with throwaway_knowledge_base(settings, "archivist-eval-") as (kb, eval_settings, files):
        started = time.perf_counter()
        ingestor = Ingestor(kb, eval_settings.chunker_config())
        documents, questions, unmapped = build_knowledge_base(kb, ingestor, articles, files)
        ingest_seconds = time.perf_counter() - started
        if how_why:
            questions = [question for question in questions if asks_how_or_why(question.text)]
        if sample is not None and sample < len(questions):
            questions = random.Random(seed).sample(questions, sample)

        def step(stage: str) -> Callable[[int], None] | None:
            return None if progress is None else lambda done: progress(stage, done, len(questions))

        with one_intra_op_thread():
            modes = evaluate_retrieval(kb, documents, questions, progress=step("retrieval"))
        generation: dict[str, dict[str, float]] | None = None
        llm = None
        if generate:
            generator = load_generator(eval_settings)
            llm = generator.name
            generation = {}
            # The base model and every adapter, each scored on the same questions in this run.
            for adapter in ((NO_ADAPTER,) if base else ()) + served_adapters(generator):
                for style, suffix in answer_styles(eval_settings, free_text):
                    pipeline = RagPipeline(
                        kb, generator, eval_settings.max_new_tokens, eval_settings.min_relevance, adapter,
                        style,
                    )  # fmt: skip
                    label = ("base model" if adapter == NO_ADAPTER else f"+ {adapter}") + suffix
                    generation[label] = evaluate_answers(
                        pipeline, kb, documents, questions, eval_settings.top_k, seed, step(label)
                    )
        chunks = sum(info.chunk_count for info in kb.list_documents(COLLECTION))
        config = kb.config
        setup = {
            "embedder": kb.embedder_for(COLLECTION).name,
            "llm": llm,
            "chunk_tokens": eval_settings.chunk_tokens,
            "chunk_overlap": eval_settings.chunk_overlap,
            "index_titles": config.index_titles,
            "fusion": config.fusion,
            "rrf_k": config.rrf_k,
            "dense_weight": config.dense_weight,
            "bm25_k1": config.bm25_k1,
            "bm25_b": config.bm25_b,
            "reranker": str(config.reranker_path) if config.reranker_path else None,
            "sample": sample,
            "seed": seed,
            "split": split,
            "min_relevance": eval_settings.min_relevance,
            "presence_penalty": eval_settings.answer_presence_penalty,
            "refusal_penalty": eval_settings.answer_refusal_penalty,
            "copy_spans": eval_settings.answer_copy_spans,
        }
    return Report(
        dataset=squad.name,
        articles=len(articles),
        chunks=chunks,
        questions=len(questions),
        unmapped_answers=unmapped,
        ingest_seconds=ingest_seconds,
        setup=setup,
        modes=modes,
        generation=generation,
    )


def markdown_table(report: Report) -> str:
    header = ["mode", *(f"recall@{k}" for k in RECALL_AT), "MRR@10", "p50 ms", "p95 ms"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for mode, result in report.modes.items():
        cells = [
            mode,
            *(f"{result.recall[k]:.3f}" for k in RECALL_AT),
            f"{result.mrr_at_10:.3f}",
            f"{result.latency_p50_ms:.1f}",
            f"{result.latency_p95_ms:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if report.generation:
        from app.quality.answer_eval import answers_table

        lines += ["", *answers_table(str(report.setup["llm"]), report.generation)]
    return "\n".join(lines)


def report_json(report: Report) -> dict[str, Any]:
    payload = asdict(report)
    for result in payload["modes"].values():
        result["recall"] = {f"@{k}": v for k, v in result["recall"].items()}
    return payload


def write_outputs(report: Report, prefix: Path) -> tuple[Path, Path]:
    """`prefix`.json (every number, per-query latencies included) and `prefix`.png (recall@k curves and
    latency histograms per mode)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prefix.parent.mkdir(parents=True, exist_ok=True)
    json_path, png_path = prefix.with_suffix(".json"), prefix.with_suffix(".png")
    json_path.write_text(json.dumps(report_json(report), indent=2) + "\n", encoding="utf-8")

    figure, (curves, histogram) = plt.subplots(1, 2, figsize=(12, 4.5))
    ks = range(1, MAX_K + 1)
    # Shared bins up to the 99th percentile of all modes, so the histograms compare; the tail is clipped.
    everything = np.concatenate([result.latencies_ms for result in report.modes.values()])
    edges = np.linspace(0.0, float(np.percentile(everything, 99)), 60)
    for mode, result in report.modes.items():
        curves.plot(ks, result.recall_curve, marker="o", markersize=3, label=mode)
        label = f"{mode} (p50 {result.latency_p50_ms:.1f} ms)"
        clipped = np.minimum(result.latencies_ms, edges[-1])
        histogram.hist(clipped, bins=edges, histtype="step", linewidth=1.5, label=label)
    curves.set(xlabel="k", ylabel="recall@k", title=f"{report.dataset}: {report.questions} questions")
    curves.set_xticks([1, 5, 10, 15, 20])
    curves.grid(alpha=0.3)
    curves.legend()
    histogram.set(xlabel="retrieval latency, ms (query embedding included)", ylabel="queries")
    histogram.set_title("latency per query")
    histogram.legend()
    figure.tight_layout()
    figure.savefig(png_path, dpi=110)
    plt.close(figure)
    return json_path, png_path

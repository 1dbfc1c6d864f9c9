"""The `archivist` command line: ingest, ask, serve, ui, run and reindex."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from app.settings import Settings, get_settings
from ingest.pipeline import FileResult, Ingestor, IngestReport
from ingest.pipeline import Progress as IngestProgress

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from app.ops.auth import KeyInfo, KeyStore
    from retriever.schema import MigrationChain
    from retriever.store import KnowledgeBase

cli = typer.Typer(help="Archivist: answers about your own documents, with citations.", no_args_is_help=True)
console = Console()
REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_DOCS = REPO_ROOT / "docs"

CollectionOption = Annotated[str | None, typer.Option("--collection", "-c", help="Collection name")]
ModeOption = Annotated[
    Literal["dense", "lexical", "hybrid"] | None,
    typer.Option("--mode", "-m", help="Retrieval: dense, lexical or hybrid (default from settings)"),
]


def _settings() -> Settings:
    """The settings, or a message naming each bad `ARCHIVIST_*` variable and exit status 2."""
    from pydantic import ValidationError

    try:
        return get_settings()
    except ValidationError as error:
        for problem in error.errors():
            variable = "ARCHIVIST_" + "_".join(str(part) for part in problem["loc"]).upper()
            console.print(f"[red]error:[/red] invalid setting {variable}: {problem['msg']}", highlight=False)
        raise typer.Exit(2) from error


def _one_answer_settings() -> Settings:
    """Settings for a command that generates one answer and exits: the engine decodes eagerly unless told
    otherwise, since compiling its decode step (tens of seconds even when cached) outlasts one answer."""
    settings = _settings()
    if "llm_enforce_eager" in settings.model_fields_set:
        return settings
    return settings.model_copy(update={"llm_enforce_eager": True})


def _print_report(report: IngestReport) -> None:
    counts = report.counts
    summary = Table(title=f"Ingest summary ({report.seconds:.1f} s)")
    statuses = ("added", "unchanged", "updated", "skipped", "failed")
    for column in (*statuses, "chunks written", "duplicates"):
        summary.add_column(column, justify="right")
    summary.add_row(
        *(str(counts.get(status, 0)) for status in statuses),
        str(report.chunks_written),
        str(counts.get("duplicate", 0)),
    )
    console.print(summary)
    # Plain lines rather than tables: a long path then moves to a line of its own instead of being cut.
    problems = [r for r in report.results if r.status in ("failed", "skipped")]
    if problems:
        console.print("[bold]Files not ingested[/bold]")
        for result in problems:
            console.print(f"  {result.status}: {result.path} — {result.reason}", highlight=False)
    if report.duplicates:
        dropped = sum(duplicate.chunks for _, duplicate in report.duplicates)
        console.print(
            f"[bold]Duplicates left out[/bold] ({counts.get('duplicate', 0)} file(s), {dropped} chunk(s))"
        )
        for path, duplicate in report.duplicates:
            what = f"{duplicate.chunks} chunk(s) of" if duplicate.chunks else "all of"
            console.print(
                f"  {what} {path} repeat {duplicate.of_title!r} ({duplicate.of_source}), "
                f"similarity {duplicate.similarity:.2f}",
                highlight=False,
            )
    if report.pruned:
        console.print(f"[bold]Pruned[/bold] {len(report.pruned)} document(s) whose files are gone:")
        for source in report.pruned:
            console.print(f"  {source}", highlight=False)


@contextmanager
def _ingest_progress() -> Iterator[tuple[Callable[[FileResult], None], Callable[[IngestProgress], None]]]:
    """A progress bar (files/s, chunks/s, the file being read) and the two callbacks that move it."""
    with Progress(
        TextColumn("[bold]ingesting"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rates]}"),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("", total=None, rates="")
        started = time.perf_counter()

        def update(state: IngestProgress) -> None:
            elapsed = max(time.perf_counter() - started, 1e-9)
            rates = f"{state.files_done / elapsed:.1f} files/s, {state.chunks_written / elapsed:.1f} chunks/s"
            progress.update(task, total=state.files_total, completed=state.files_done, rates=rates)

        def show(result: FileResult) -> None:
            progress.update(task, description=result.path)

        yield show, update


def run_ingest(settings: Settings, paths: list[Path], collection: str, prune: bool = False) -> IngestReport:
    from app.services import load_knowledge_base

    kb = load_knowledge_base(settings, open_indexes=False)
    try:
        ingestor = Ingestor(kb, settings.chunker_config(), settings.ingest_config())
        with _ingest_progress() as (show, update):
            return ingestor.ingest_paths(paths, collection, on_result=show, prune=prune, on_progress=update)
    finally:
        kb.close()


def _print_watch_line(text: str) -> None:
    console.print(f"{time.strftime('%H:%M:%S')} {text}", markup=False, highlight=False, soft_wrap=True)
    console.file.flush()  # shown at once even when stdout is a file or a pipe


def _print_changes(report: IngestReport) -> None:
    """What one run of `ingest --watch` did: a line per document removed because its file is gone, then per
    file that did not stay unchanged (with the reason of a failure or of a copy left out)."""
    for source in report.pruned:
        _print_watch_line(f"removed: {source}")
    for result in report.results:
        if result.status != "unchanged":
            _print_watch_line(
                f"{result.status}: {result.path}" + (f" — {result.reason}" if result.reason else "")
            )


def _watch_folders(settings: Settings, folders: list[Path], collection: str) -> None:
    """`ingest --watch`: sync the folders in full, then apply their changes as they happen, until Ctrl-C or
    SIGTERM (exit status 0)."""
    from app.services import load_knowledge_base
    from ingest.watch import FolderWatcher

    files = [str(path) for path in folders if not path.is_dir()]
    if files:
        console.print(
            f"[red]error:[/red] --watch takes folders, not files: {', '.join(files)}", highlight=False
        )
        raise typer.Exit(2)
    signal.signal(signal.SIGTERM, _interrupt)  # a process supervisor's stop ends the watch like Ctrl-C
    kb = load_knowledge_base(settings, open_indexes=False)
    ingestor = Ingestor(kb, settings.chunker_config(), settings.ingest_config())
    watcher = FolderWatcher(ingestor, folders, collection, _print_changes, _print_watch_line)
    try:
        watcher.start()
    except OSError as error:
        kb.close()
        console.print(f"[red]error:[/red] cannot watch the folders: {error}", highlight=False)
        raise typer.Exit(1) from error
    try:
        with _ingest_progress() as (show, update):
            report = watcher.sync(show, update)
        _print_report(report)
        _print_watch_line(f"watching {', '.join(map(str, folders))} for changes; press Ctrl-C to stop")
        watcher.run()
    except KeyboardInterrupt:
        console.print("stopped")
    finally:
        watcher.close()
        kb.close()


@cli.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(exists=True, help="Files and folders to ingest")],
    collection: CollectionOption = None,
    prune: Annotated[
        bool, typer.Option("--prune", help="Remove documents whose files under PATHS are gone")
    ] = False,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            help="Then keep the collection in step with the folders PATHS (new, changed, renamed and deleted "
            "files) until Ctrl-C; implies --prune",
        ),
    ] = False,
) -> None:
    """Ingest files and folders (txt, md, html, pdf, docx, xlsx, csv, pptx, json, jsonl, SQuAD json; scanned
    PDFs and images by OCR) into a collection: new files are added, changed ones replaced, unchanged ones
    skipped, duplicates left out."""
    settings = _settings()
    if watch:
        _watch_folders(settings, paths, collection or settings.default_collection)
        return
    report = run_ingest(settings, paths, collection or settings.default_collection, prune)
    _print_report(report)
    if report.counts.get("failed"):
        raise typer.Exit(1)


documents_cli = typer.Typer(help="List, show and delete documents.", no_args_is_help=True)
cli.add_typer(documents_cli, name="documents")


@contextmanager
def _knowledge_base() -> Iterator[KnowledgeBase]:
    from app.services import load_knowledge_base
    from retriever.records import InvalidNameError, NotFoundError

    kb = load_knowledge_base(_settings(), open_indexes=False)
    try:
        yield kb
    except (NotFoundError, InvalidNameError) as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(1) from error
    finally:
        kb.close()


@documents_cli.command("list")
def documents_list(collection: CollectionOption = None) -> None:
    """List the documents of one collection (default: every collection)."""
    with _knowledge_base() as kb:
        documents = kb.list_documents(collection)
    table = Table(title=f"{len(documents)} document(s)")
    for column in ("id", "collection", "title", "type", "chunks", "bytes", "source"):
        table.add_column(column, justify="right" if column in ("id", "chunks", "bytes") else "left")
    for d in documents:
        table.add_row(
            str(d.id),
            d.collection,
            d.title,
            d.file_type,
            str(d.chunk_count),
            str(d.size_bytes),
            d.source_path,
        )
    console.print(table)


@documents_cli.command("show")
def documents_show(
    document_id: Annotated[int, typer.Argument(help="Document id")],
    text: Annotated[bool, typer.Option("--text", help="Print each chunk's whole text")] = False,
) -> None:
    """Show a document and its chunks: position, page, heading path, tokens, characters."""
    with _knowledge_base() as kb:
        document = kb.get_document(document_id)
        chunks = kb.get_chunks(document_id)
    console.print(
        f"[bold]{document.title}[/bold]  (document {document.id}, collection {document.collection})"
    )
    console.print(
        f"source {document.source_path}, {document.file_type}, {document.size_bytes} bytes, "
        f"sha256 {document.content_hash[:12]}, updated {document.updated_at:%Y-%m-%d %H:%M:%S}"
    )
    table = Table(title=f"{len(chunks)} chunk(s)")
    for column in ("#", "page", "heading path", "tokens", "chars", "text"):
        table.add_column(column)
    for chunk in chunks:
        preview = (
            chunk.text if text else chunk.text[:80].replace("\n", " ") + ("…" if len(chunk.text) > 80 else "")
        )
        table.add_row(
            str(chunk.ordinal),
            "" if chunk.page is None else str(chunk.page),
            chunk.heading_path,
            str(chunk.token_count),
            f"{chunk.char_start}-{chunk.char_end}",
            preview,
        )
    console.print(table)


@documents_cli.command("delete")
def documents_delete(document_ids: Annotated[list[int], typer.Argument(help="Document ids")]) -> None:
    """Delete documents: from SQL, the vector index and the lexical index at once."""
    with _knowledge_base() as kb:
        for document_id in document_ids:
            deleted = kb.delete_document(document_id)
            console.print(f"deleted document {deleted.id}: {deleted.title} ({deleted.chunk_count} chunks)")


@cli.command()
def ask(
    question: Annotated[str, typer.Argument(help="The question")],
    collection: CollectionOption = None,
    top_k: Annotated[int | None, typer.Option("--top-k", "-k", min=1, max=50)] = None,
    mode: ModeOption = None,
    adapter: Annotated[
        str | None, typer.Option(help="LoRA adapter to answer with; 'none': the base model")
    ] = None,
) -> None:
    """Answer a question from a collection and list the numbered sources."""
    from app.rag.generation import GenerationFailedError
    from app.rag.pipeline import AnswerStyle, RagPipeline
    from app.services import ContextWindowError, load_knowledge_base, load_rag_generator
    from llm.base import UnknownAdapterError
    from llm.engine.sanity import CorruptModelError
    from retriever.records import NotFoundError

    if not question.strip():
        console.print("[red]error:[/red] the question is empty")
        raise typer.Exit(2)
    settings = _one_answer_settings()
    kb = load_knowledge_base(settings)
    try:
        generator = load_rag_generator(settings)
        pipeline = RagPipeline(
            kb, generator, settings.max_new_tokens, settings.min_relevance, adapter, AnswerStyle.of(settings)
        )
        answer = pipeline.answer(
            question, collection or settings.default_collection, top_k or settings.top_k, mode
        )
    except (
        NotFoundError, CorruptModelError, ContextWindowError, GenerationFailedError, UnknownAdapterError,
    ) as error:  # fmt: skip
        console.print(f"[red]error:[/red] {escape(str(error))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from error
    finally:
        kb.close()
    console.print(answer.answer or "(empty answer)")
    console.print()
    for source in answer.sources:
        mark = "*" if source.n in answer.cited else " "
        console.print(
            f"{mark}[{source.n}] {source.hit.title} — chunk {source.hit.ordinal} "
            f"(chars {source.hit.char_start}-{source.hit.char_end}), score {source.hit.score:.3f}",
            highlight=False,
        )


@cli.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="The user message")],
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-n", min=1, max=8192)] = 256,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 = greedy")] = 0.0,
    seed: Annotated[int | None, typer.Option(help="Same seed, same text")] = None,
    system: Annotated[str | None, typer.Option(help="A system message")] = None,
    adapter: Annotated[
        str, typer.Option(help="LoRA adapter to generate with (the RAG adapter expects passages)")
    ] = "none",
) -> None:
    """Stream the model's reply to one message, without retrieval (checks the generation backend)."""
    import time

    from app.rag.generation import GenerationFailedError
    from app.services import load_generator
    from llm.base import ChatMessage, ContextOverflowError, SamplingParams, UnknownAdapterError
    from llm.engine.sanity import CorruptModelError

    if not prompt.strip():
        console.print("[red]error:[/red] the prompt is empty")
        raise typer.Exit(2)
    messages = ([ChatMessage("system", system)] if system else []) + [ChatMessage("user", prompt)]
    try:
        generator = load_generator(_one_answer_settings())
        started = time.perf_counter()
        params = SamplingParams(
            max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, adapter=adapter
        )
        for event in generator.stream(messages, params):
            console.out(event.text, end="", highlight=False)
            final = event
        if final.finish_reason == "error":
            if final.completion_tokens:
                console.print()  # the message goes on a line of its own, after the text streamed so far
            raise GenerationFailedError(generator.name)
    except (CorruptModelError, ContextOverflowError, GenerationFailedError, UnknownAdapterError) as error:
        console.print(f"[red]error:[/red] {escape(str(error))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from error
    seconds = time.perf_counter() - started
    console.print(
        f"\n[dim]{final.completion_tokens} tokens in {seconds:.2f} s "
        f"({final.completion_tokens / seconds:.1f} tok/s), prompt {final.prompt_tokens} tokens, "
        f"finish: {final.finish_reason}[/dim]",
        highlight=False,
    )


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address")] = None,
    port: Annotated[int | None, typer.Option(help="Port")] = None,
) -> None:
    """Start the REST API. API keys are required unless it listens on a loopback address only."""
    import uvicorn

    from app.api.app import create_app
    from app.ops.logs import configure_logging

    settings = _settings()
    if host:
        settings = settings.model_copy(update={"host": host})
    configure_logging(os.environ.get("ARCHIVIST_LOG_LEVEL", "INFO"), settings.log_format)
    if settings.auth_required and settings.admin_key is None:
        console.print(
            f"[yellow]warning:[/yellow] API keys are required on {settings.host} and ARCHIVIST_ADMIN_KEY "
            "is not set: only keys made with `archivist keys create` get in"
        )
    # Requests are logged by the app's middleware, as JSON with their request id: uvicorn's own access log
    # and logging setup stay off.
    uvicorn.run(
        create_app(settings=settings),
        host=settings.host,
        port=port or settings.api_port,
        log_config=None,
        access_log=False,
    )


@cli.command()
def worker() -> None:
    """Run ingest jobs from the broker (ARCHIVIST_BROKER_URL) until stopped; start as many as needed."""
    from app.ops.jobs import JobStore
    from app.ops.logs import configure_logging
    from app.ops.worker import Dispatcher, run_worker
    from app.schema import SERVICE_CHAIN
    from app.services import load_knowledge_base
    from retriever.db import Database
    from retriever.schema import check_schema

    settings = _settings()
    if settings.broker_url is None:
        console.print(
            "[red]error:[/red] ARCHIVIST_BROKER_URL is not set: without a broker the API runs ingest jobs"
        )
        raise typer.Exit(2)
    configure_logging(os.environ.get("ARCHIVIST_LOG_LEVEL", "INFO"), settings.log_format)
    Dispatcher(settings.broker_url.get_secret_value(), settings.broker_queue)  # the broker answers
    db = Database(settings.resolved_database_url)
    check_schema(db.engine, SERVICE_CHAIN)
    kb = load_knowledge_base(settings, open_indexes=False)
    try:
        ingestor = Ingestor(kb, settings.chunker_config(), settings.ingest_config())
        run_worker(settings, ingestor, JobStore(db))
    finally:
        kb.close()
        db.dispose()


engine_cli = typer.Typer(help="The inference engine as a service of its own.", no_args_is_help=True)
cli.add_typer(engine_cli, name="engine")


@engine_cli.command("serve")
def engine_serve(
    host: Annotated[str | None, typer.Option(help="Bind address")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default ARCHIVIST_ENGINE_PORT, 8001)")] = None,
) -> None:
    """Serve the model alone behind an OpenAI-compatible API (/v1/chat/completions, /v1/models), for API
    replicas (ARCHIVIST_LLM_BACKEND=openai, ARCHIVIST_LLM_URL) or any OpenAI client."""
    import uvicorn

    from app.ops.logs import configure_logging
    from app.services import load_generator, shut_down
    from llm.server import create_engine_app

    settings = _settings()
    if settings.llm_backend == "openai":
        console.print(
            "[red]error:[/red] the engine serves a model of its own: set ARCHIVIST_LLM_BACKEND to engine"
        )
        raise typer.Exit(2)
    configure_logging(os.environ.get("ARCHIVIST_LOG_LEVEL", "INFO"), settings.log_format)
    api_key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else None
    bind = host or settings.host
    if api_key is None and bind not in ("127.0.0.1", "localhost", "::1"):
        console.print(f"[yellow]warning:[/yellow] the engine listens on {bind} with no ARCHIVIST_LLM_API_KEY")
    try:
        generator = load_generator(settings, compile_in_background=True)
    except Exception as error:  # a missing, corrupt or unsupported model: say which, in one line
        console.print(f"[red]error:[/red] {escape(str(error))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from error
    try:
        app = create_engine_app(generator, api_key, settings.max_new_tokens)
        uvicorn.run(app, host=bind, port=port or settings.engine_port, log_config=None, access_log=False)
    finally:
        shut_down(generator)


def _ui_command(settings: Settings) -> list[str]:
    return [
        sys.executable, "-m", "streamlit", "run", str(REPO_ROOT / "ui" / "app.py"),
        "--server.address", settings.host, "--server.port", str(settings.ui_port),
        "--server.headless", "true", "--browser.gatherUsageStats", "false",
    ]  # fmt: skip


def _page_env(settings: Settings) -> dict[str, str]:
    """Where the chat page finds the API, and the key it sends: the admin key when keys are required and no
    ARCHIVIST_API_KEY is set (the page runs beside the API, for the same user)."""
    env = {**os.environ, "ARCHIVIST_API_URL": settings.resolved_api_url}
    if settings.auth_required and settings.admin_key and "ARCHIVIST_API_KEY" not in env:
        env["ARCHIVIST_API_KEY"] = settings.admin_key.get_secret_value()
    return env


@cli.command()
def ui() -> None:
    """Start the Streamlit chat page (it talks to the API at ARCHIVIST_API_URL)."""
    settings = _settings()
    raise typer.Exit(subprocess.call(_ui_command(settings), env=_page_env(settings)))


@cli.command()
def reindex() -> None:
    """Rebuild every vector index (FAISS files or Milvus collections) and BM25 index from the chunks stored
    in SQL."""
    from app.services import load_knowledge_base

    kb = load_knowledge_base(_settings(), open_indexes=False)
    try:
        console.print(f"reindexed {kb.reindex()} chunks")
    finally:
        kb.close()


@cli.command("eval")
def evaluate(
    squad: Annotated[
        Path | None,
        typer.Argument(exists=True, dir_okay=False, help="SQuAD-format or archivist-qa/1 JSON file"),
    ] = None,
    perplexity: Annotated[
        Path | None,
        typer.Option(help="Instead: the LLM's perplexity on this text file (tokens, mean NLL, perplexity)"),
    ] = None,
    sample: Annotated[int | None, typer.Option(min=1, help="N random questions, all articles")] = None,
    generate: Annotated[bool, typer.Option(help="Also score the LLM's answers: exact match and F1")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the question sample")] = 0,
    split: Annotated[
        str, typer.Option(help="Articles: all, or the fine-tuning split's train or validation articles")
    ] = "all",
    base: Annotated[bool, typer.Option(help="With --generate, also score the model without adapters")] = True,
    free_text: Annotated[
        bool,
        typer.Option(help="With --generate, also score answers generated where extracted, and not copied"),
    ] = False,
    how_why: Annotated[
        bool, typer.Option(help="Only the questions that ask how or why (not how many, how long...)")
    ] = False,
    output: Annotated[
        Path | None, typer.Option(help="Path prefix of the .json and .png (default: DATA_DIR/eval/FILE)")
    ] = None,
    documents: Annotated[
        Path | None, typer.Option(file_okay=False, help="archivist-qa/1 sets: the folder of their documents")
    ] = None,
) -> None:
    """Build a fresh knowledge base from a SQuAD file and report recall@k, MRR@10 and latency per mode
    (and answers with --generate); or do the same for a question set in the archivist-qa/1 format
    (app/evalsets/) over the documents it names, reporting hit@5 per mode and kind of question."""
    from app.quality.evaluation import (
        EvaluationError,
        markdown_table,
        run_evaluation,
        split_name,
        write_outputs,
    )
    from app.quality.evaluation_qa import is_qa_set

    if perplexity is not None:
        _evaluate_perplexity(perplexity)
        return
    if squad is None:
        console.print("[red]error:[/red] give a SQuAD-format or archivist-qa/1 file, or --perplexity FILE")
        raise typer.Exit(2)
    settings = _settings()
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=True,
    ) as progress:  # fmt: skip
        task = progress.add_task("building the knowledge base", total=None)

        def advance(stage: str, done: int, total: int) -> None:
            progress.update(task, description=stage, completed=done, total=total)

        if is_qa_set(squad):
            _evaluate_question_set(settings, squad, documents, generate, advance, output, free_text)
            return
        try:
            report = run_evaluation(
                settings, squad, sample, generate, seed, advance, split_name(split), base, free_text, how_why
            )
        except EvaluationError as error:
            console.print(f"[red]error:[/red] {error}")
            raise typer.Exit(1) from error
    console.print(
        f"{report.dataset}: {report.articles} articles → {report.chunks} chunks in "
        f"{report.ingest_seconds:.0f} s, {report.questions} questions"
        + (f", {report.unmapped_answers} gold answers not locatable" if report.unmapped_answers else ""),
        highlight=False,
    )
    typer.echo(markdown_table(report))
    json_path, png_path = write_outputs(report, output or settings.data_dir / "eval" / squad.stem)
    console.print(f"wrote {json_path} and {png_path}", highlight=False)


def _evaluate_perplexity(path: Path) -> None:
    from llm.locate import ModelNotFoundError
    from llm.model.presets import UnsupportedModelError
    from llm.perplexity import TextFileError, perplexity_of_file

    try:
        name, result = perplexity_of_file(_one_answer_settings().engine_config(), path)
    except (TextFileError, ModelNotFoundError, UnsupportedModelError) as error:
        console.print(f"[red]error:[/red] {escape(str(error))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from error
    typer.echo(
        f"{name} on {path}: {result.tokens} tokens, mean NLL {result.mean_nll:.4f}, "
        f"perplexity {result.perplexity:.3f}"
    )


def _evaluate_question_set(
    settings: Settings,
    path: Path,
    documents: Path | None,
    generate: bool,
    advance: Callable[[str, int, int], None],
    output: Path | None,
    free_text: bool,
) -> None:
    import dataclasses
    import json

    from app.quality.evaluation import EvaluationError
    from app.quality.evaluation_qa import qa_markdown_table, run_qa_evaluation

    if documents is None:
        console.print(f"[red]error:[/red] {path} is a question set: give its documents' folder, --documents")
        raise typer.Exit(2)
    try:
        report = run_qa_evaluation(settings, path, documents, generate, advance, free_text)
    except EvaluationError as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(1) from error
    typer.echo(qa_markdown_table(report))
    json_path = (output or settings.data_dir / "eval" / path.stem).with_suffix(".json")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(dataclasses.asdict(report), indent=2, ensure_ascii=False) + "\n", "utf-8")
    console.print(f"wrote {json_path}", highlight=False)


@cli.command()
def finetune(
    squad: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="SQuAD-format JSON file")],
    output: Annotated[Path, typer.Option(help="Folder of the adapter (PEFT format)")] = Path("adapters/rag"),
    examples: Annotated[int, typer.Option(min=1, help="Training questions (about)")] = 1000,
    no_answer_share: Annotated[
        float, typer.Option(min=0.0, max=0.9, help="Share of no-answer examples")
    ] = 0.15,
    validation: Annotated[int, typer.Option(min=1, help="Validation questions scored at the end")] = 60,
    rank: Annotated[int, typer.Option(min=1, help="LoRA rank")] = 16,
    learning_rate: Annotated[float, typer.Option(min=0.0, help="Peak learning rate")] = 1e-3,
    epochs: Annotated[int, typer.Option(min=1)] = 1,
    seed: Annotated[int, typer.Option(help="Seed of the example sampling and the initialisation")] = 0,
    start_from: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            file_okay=False,
            help="Go on training this adapter (PEFT folder, its rank and alpha kept), e.g. with a new seed",
        ),
    ] = None,
    questions: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="Questions written over the training articles (app/trainsets/*.json), trained on "
            "instead of their own",
        ),
    ] = None,
) -> None:
    """Train a LoRA adapter that teaches the LLM the RAG answer format (short answer + [n] citation)."""
    from app.quality.evaluation import EvaluationError
    from app.quality.finetune import FinetuneError, FinetuneOptions, run_finetune

    settings = _settings()
    options = FinetuneOptions(
        examples=examples, validation_questions=validation, no_answer_share=no_answer_share, rank=rank,
        alpha=2.0 * rank,
        learning_rate=learning_rate, epochs=epochs, seed=seed,
        start_from=str(start_from) if start_from is not None else None,
        questions=str(questions) if questions is not None else None,
    )  # fmt: skip
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, TextColumn("{task.fields[info]}"), console=console) as progress:
        task = progress.add_task("loading", total=None, info="")

        last_logged = [("", -1)]  # (stage, forties done) of the last log line

        def advance(stage: str, done: int, total: int, info: str) -> None:
            progress.update(task, description=stage, completed=done, total=total or None, info=info)
            # A log (not a terminal) gets a line per stage, then one each time another 40 are done.
            line = (stage, done // 40)
            if console.is_terminal or (line == last_logged[0] and done != total):
                return
            last_logged[0] = line
            console.print(f"{stage} {done}/{total} {info}", highlight=False)

        try:
            report = run_finetune(settings, squad, output, options, advance)
        except (EvaluationError, FinetuneError) as error:
            console.print(f"[red]error:[/red] {error}")
            raise typer.Exit(1) from error
    scores = report.validation
    console.print(
        f"trained on {report.train_examples} examples ({report.no_answer_examples} no-answer) of "
        f"{len(report.train_articles)} articles in {report.seconds / 60:.1f} min, final loss "
        f"{report.final_loss:.3f}\nvalidation ({len(report.validation_articles)} held-out articles, gold "
        f"passage + 2 distractors, {scores['questions']:.0f} questions): exact match "
        f"{scores['exact_match']:.3f}, F1 {scores['f1']:.3f}, refused {scores['refused']:.3f}\n"
        f"wrote {report.output}",
        highlight=False,
    )


keys_cli = typer.Typer(help="Create, list and revoke API keys (stored hashed).", no_args_is_help=True)
cli.add_typer(keys_cli, name="keys")


@contextmanager
def _key_store() -> Iterator[KeyStore]:
    from app.ops.auth import KeyStore
    from app.schema import SERVICE_CHAIN
    from retriever.db import Database
    from retriever.schema import check_schema

    db = Database(_settings().resolved_database_url)
    try:
        check_schema(db.engine, SERVICE_CHAIN)
        yield KeyStore(db)
    finally:
        db.dispose()


def _print_keys(keys: list[KeyInfo]) -> None:
    table = Table(title="API keys")
    for column in ("id", "name", "prefix", "read", "write", "created", "expires", "revoked"):
        table.add_column(column)
    for key in keys:
        table.add_row(
            str(key.id),
            key.name,
            key.prefix + "…",
            ", ".join(sorted(c for c, write in key.grants.items() if not write)),
            ", ".join(sorted(c for c, write in key.grants.items() if write)),
            f"{key.created_at:%Y-%m-%d %H:%M}",
            f"{key.expires_at:%Y-%m-%d %H:%M}" if key.expires_at else "",
            f"{key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "",
        )
    console.print(table)


@keys_cli.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="What the key is for")],
    read: Annotated[
        list[str] | None, typer.Option("--read", "-r", help="Collection it may read ('*': all)")
    ] = None,
    write: Annotated[
        list[str] | None, typer.Option("--write", "-w", help="Collection it may read and change ('*': all)")
    ] = None,
    expires_days: Annotated[
        int | None, typer.Option("--expires-days", min=1, help="Valid for N days")
    ] = None,
) -> None:
    """Create a key and print it once: only its hash is stored."""
    from datetime import datetime, timedelta, timezone

    from retriever.records import InvalidNameError

    expires = datetime.now(timezone.utc) + timedelta(days=expires_days) if expires_days else None
    with _key_store() as store:
        try:
            info, secret = store.create(name, read or [], write or [], expires)
        except (ValueError, InvalidNameError) as error:
            console.print(f"[red]error:[/red] {error}")
            raise typer.Exit(2) from error
    _print_keys([info])
    console.print(f"key: {secret}", markup=False, highlight=False, soft_wrap=True)
    console.print("Keep it now: it cannot be shown again.")


@keys_cli.command("list")
def keys_list() -> None:
    """List the keys with their rights (never the keys themselves)."""
    with _key_store() as store:
        _print_keys(store.list_keys())


@keys_cli.command("revoke")
def keys_revoke(key_id: Annotated[int, typer.Argument(help="Key id (see `archivist keys list`)")]) -> None:
    """Revoke a key: it stops working at once."""
    from retriever.records import NotFoundError

    with _key_store() as store:
        try:
            _print_keys([store.revoke(key_id)])
        except NotFoundError as error:
            console.print(f"[red]error:[/red] {error}")
            raise typer.Exit(1) from error


def _knowledge_base_is_empty(settings: Settings) -> bool:
    from sqlalchemy import func, select

    from retriever.db import Database
    from retriever.models import Document

    db = Database(settings.resolved_database_url)
    try:
        with db.session() as session:
            return not session.scalar(select(func.count(Document.id)))
    finally:
        db.dispose()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@cli.command()
def run() -> None:
    """Ingest the demo docs when the knowledge base is empty, then start the API and the chat page."""
    # A SIGTERM (kill, a process supervisor) stops both servers like Ctrl-C does instead of orphaning them.
    signal.signal(signal.SIGTERM, _interrupt)
    settings = _settings()
    if _knowledge_base_is_empty(settings) and DEMO_DOCS.is_dir():
        console.print(f"Knowledge base is empty: ingesting the demo documents from {DEMO_DOCS}")
        _print_report(run_ingest(settings, [DEMO_DOCS], settings.default_collection))
    env = _page_env(settings)
    api = subprocess.Popen([sys.executable, "-m", "app.cli", "serve"], env=env)
    page = subprocess.Popen(_ui_command(settings), env=env, stdout=subprocess.DEVNULL)
    console.print(f"API:       {settings.resolved_api_url}  (docs at {settings.resolved_api_url}/docs)")
    console.print(f"Chat page: http://{settings.host}:{settings.ui_port}")
    console.print("Press Ctrl-C to stop both.")
    console.file.flush()  # shown at once even when stdout is a file or a pipe
    try:
        while api.poll() is None and page.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for process in (api, page):
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for process in (api, page):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
    console.print("stopped")


db_cli = typer.Typer(help="The database's schema: its revision, and upgrading it.", no_args_is_help=True)
cli.add_typer(db_cli, name="db")


@contextmanager
def _migration_chains() -> Iterator[tuple[Engine, tuple[MigrationChain, ...]]]:
    """An engine on the configured database, without the start-up schema check, and every migration chain."""
    from app.schema import SERVICE_CHAIN
    from retriever.db import make_engine
    from retriever.schema import RETRIEVER_CHAIN

    engine = make_engine(_settings().resolved_database_url)
    try:
        yield engine, (RETRIEVER_CHAIN, SERVICE_CHAIN)
    finally:
        engine.dispose()


@db_cli.command("upgrade")
def db_upgrade() -> None:
    """Bring the database's tables to this version's schema (back the database up first)."""
    from retriever.schema import upgrade_schema

    with _migration_chains() as (engine, chains):
        for chain in chains:
            before, after = upgrade_schema(engine, chain)
            change = f"already at revision {after}" if before == after else f"{before or 'none'} -> {after}"
            console.print(f"{chain.component} tables: {change}")


@db_cli.command("status")
def db_status() -> None:
    """The schema revision of the database's tables, and this version's; exit 1 when an upgrade is due."""
    from retriever.schema import current_revision

    due = False
    with _migration_chains() as (engine, chains):
        for chain in chains:
            current, head = current_revision(engine, chain), chain.head()
            due |= current != head
            console.print(f"{chain.component} tables: revision {current or 'none'}, this version's {head}")
    if due:
        raise typer.Exit(1)


def main() -> None:
    from sqlalchemy.exc import ArgumentError, OperationalError

    from retriever.records import ServiceUnavailableError
    from retriever.schema import SchemaError

    logging.basicConfig(level=os.environ.get("ARCHIVIST_LOG_LEVEL", "WARNING"))
    # What any command that opens the database can meet: one line and exit 2 instead of a traceback.
    try:
        cli()
    except (SchemaError, ServiceUnavailableError) as error:
        problem = str(error)
    except ArgumentError as error:
        problem = f"ARCHIVIST_DATABASE_URL is not a database URL: {error}"
    except OperationalError as error:
        problem = f"cannot open the database: {str(error.orig or error).splitlines()[0]}"
    else:
        return
    console.print(f"[red]error:[/red] {escape(problem)}", highlight=False, soft_wrap=True)
    raise SystemExit(2)


if __name__ == "__main__":
    main()

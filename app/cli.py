"""The `archivist` command line: ingest, ask, serve, ui, run and reindex."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from app.settings import Settings, get_settings
from ingest.pipeline import Ingestor, IngestReport, discover

cli = typer.Typer(help="Archivist: answers about your own documents, with citations.", no_args_is_help=True)
console = Console()
REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_DOCS = REPO_ROOT / "docs"

CollectionOption = Annotated[str | None, typer.Option("--collection", "-c", help="Collection name")]


def _settings() -> Settings:
    return get_settings()


def _print_report(report: IngestReport) -> None:
    counts = report.counts
    summary = Table(title="Ingest summary")
    for column in ("added", "unchanged", "updated", "skipped", "failed", "chunks written", "seconds"):
        summary.add_column(column, justify="right")
    summary.add_row(
        *(str(counts.get(status, 0)) for status in ("added", "unchanged", "updated", "skipped", "failed")),
        str(report.chunks_written),
        f"{report.seconds:.1f}",
    )
    console.print(summary)
    problems = [r for r in report.results if r.status in ("failed", "skipped")]
    if problems:
        details = Table(title="Files not ingested")
        details.add_column("file")
        details.add_column("status")
        details.add_column("reason")
        for result in problems:
            details.add_row(result.path, result.status, result.reason)
        console.print(details)


def run_ingest(settings: Settings, paths: list[Path], collection: str) -> IngestReport:
    from app.services import load_knowledge_base

    kb = load_knowledge_base(settings)
    try:
        ingestor = Ingestor(kb, settings.chunker_config())
        files = discover(paths)
        with Progress(
            TextColumn("[bold]ingesting"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=console,
            transient=True,
        ) as progress:
            task = progress.add_task("", total=len(files))

            def advance(result: object) -> None:
                progress.update(task, advance=1, description=getattr(result, "path", ""))

            return ingestor.ingest_paths(files, collection, on_result=advance)
    finally:
        kb.close()


@cli.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(exists=True, help="Files and folders to ingest")],
    collection: CollectionOption = None,
) -> None:
    """Ingest files and folders (.txt, .md) into a collection; unchanged files are skipped."""
    settings = _settings()
    report = run_ingest(settings, paths, collection or settings.default_collection)
    _print_report(report)
    if report.counts.get("failed"):
        raise typer.Exit(1)


@cli.command()
def ask(
    question: Annotated[str, typer.Argument(help="The question")],
    collection: CollectionOption = None,
    top_k: Annotated[int | None, typer.Option("--top-k", "-k", min=1, max=50)] = None,
) -> None:
    """Answer a question from a collection and list the numbered sources."""
    from app.rag import RagPipeline
    from app.services import load_generator, load_knowledge_base
    from retriever.store import NotFoundError

    if not question.strip():
        console.print("[red]error:[/red] the question is empty")
        raise typer.Exit(2)
    settings = _settings()
    kb = load_knowledge_base(settings)
    try:
        pipeline = RagPipeline(kb, load_generator(settings), settings.max_new_tokens)
        answer = pipeline.answer(question, collection or settings.default_collection, top_k or settings.top_k)
    except NotFoundError as error:
        console.print(f"[red]error:[/red] {error}")
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
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address")] = None,
    port: Annotated[int | None, typer.Option(help="Port")] = None,
) -> None:
    """Start the REST API."""
    import uvicorn

    from app.api import create_app

    settings = _settings()
    uvicorn.run(create_app(settings=settings), host=host or settings.host, port=port or settings.api_port)


def _ui_command(settings: Settings) -> list[str]:
    return [
        sys.executable, "-m", "streamlit", "run", str(REPO_ROOT / "ui" / "app.py"),
        "--server.address", settings.host, "--server.port", str(settings.ui_port),
        "--server.headless", "true", "--browser.gatherUsageStats", "false",
    ]  # fmt: skip


@cli.command()
def ui() -> None:
    """Start the Streamlit chat page (it talks to the API at ARCHIVIST_API_URL)."""
    settings = _settings()
    env = {**os.environ, "ARCHIVIST_API_URL": settings.resolved_api_url}
    raise typer.Exit(subprocess.call(_ui_command(settings), env=env))


@cli.command()
def reindex() -> None:
    """Rebuild every vector index from the chunks stored in SQL."""
    from app.services import load_knowledge_base

    kb = load_knowledge_base(_settings(), open_indexes=False)
    try:
        console.print(f"reindexed {kb.reindex()} chunks")
    finally:
        kb.close()


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


@cli.command()
def run() -> None:
    """Ingest the demo docs when the knowledge base is empty, then start the API and the chat page."""
    settings = _settings()
    if _knowledge_base_is_empty(settings) and DEMO_DOCS.is_dir():
        console.print(f"Knowledge base is empty: ingesting the demo documents from {DEMO_DOCS}")
        _print_report(run_ingest(settings, [DEMO_DOCS], settings.default_collection))
    env = {**os.environ, "ARCHIVIST_API_URL": settings.resolved_api_url}
    api = subprocess.Popen([sys.executable, "-m", "app.cli", "serve"], env=env)
    page = subprocess.Popen(_ui_command(settings), env=env, stdout=subprocess.DEVNULL)
    console.print(f"API:       {settings.resolved_api_url}  (docs at {settings.resolved_api_url}/docs)")
    console.print(f"Chat page: http://{settings.host}:{settings.ui_port}")
    console.print("Press Ctrl-C to stop both.")
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


def main() -> None:
    logging.basicConfig(level=os.environ.get("ARCHIVIST_LOG_LEVEL", "WARNING"))
    cli()


if __name__ == "__main__":
    main()

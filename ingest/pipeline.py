"""The ingest pipeline: discover files → load → clean → hash → chunk → embed → store, one report per batch.

A file that fails is reported with its reason and the batch goes on; an unchanged file (same content hash
as the stored version) is not re-embedded.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ingest.chunker import Chunker
from ingest.cleaning import clean_text
from ingest.config import ChunkerConfig
from ingest.loaders import LoadError, is_supported, load_file, read_bytes
from retriever.store import DocumentDraft, KnowledgeBase

FileStatus = Literal["added", "updated", "unchanged", "skipped", "failed"]


@dataclass(frozen=True)
class FileResult:
    path: str
    status: FileStatus
    reason: str = ""
    chunks: int = 0
    document_id: int | None = None


@dataclass
class IngestReport:
    results: list[FileResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def counts(self) -> Counter[str]:
        return Counter(result.status for result in self.results)

    @property
    def chunks_written(self) -> int:
        return sum(r.chunks for r in self.results if r.status in ("added", "updated"))


def discover(paths: Iterable[Path]) -> list[Path]:
    """Files under the given paths: folders are walked (hidden entries skipped, links not followed);
    files named explicitly are kept whatever their type, so an unsupported one is reported, not ignored."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found.extend(
                    Path(root) / name
                    for name in sorted(files)
                    if not name.startswith(".") and is_supported(Path(name))
                )
        else:
            found.append(path)
    return found


def content_hash(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


class Ingestor:
    def __init__(self, kb: KnowledgeBase, config: ChunkerConfig) -> None:
        self.kb = kb
        self.chunker = Chunker(config, kb.embedder.count_tokens, kb.embedder.max_content_tokens)

    def ingest_paths(
        self,
        paths: Sequence[Path],
        collection: str,
        on_result: Callable[[FileResult], None] | None = None,
    ) -> IngestReport:
        started = time.perf_counter()
        report = IngestReport()
        self.kb.ensure_collection(collection)
        for path in discover(paths):
            result = self.ingest_file(path, collection)
            report.results.append(result)
            if on_result is not None:
                on_result(result)
        report.seconds = time.perf_counter() - started
        return report

    def ingest_file(
        self, path: Path, collection: str, source_path: str | None = None, title: str | None = None
    ) -> FileResult:
        """Ingest one file; `source_path` identifies the document (defaults to the absolute path)."""
        source = source_path or str(path.resolve())
        shown = str(path)
        try:
            raw = read_bytes(path)
            if not raw.strip():
                return FileResult(shown, "skipped", "empty file")
            digest = content_hash(raw)
            existing = self.kb.find_document(collection, source)
            if existing is not None and existing.content_hash == digest:
                return FileResult(shown, "unchanged", chunks=existing.chunk_count, document_id=existing.id)
            loaded = load_file(path, raw)
            text = clean_text(loaded.text)
            if not text:
                return FileResult(shown, "skipped", "no text after cleaning")
            chunks = self.chunker.chunk(text)
            vectors = self.kb.embedder.embed([chunk.text for chunk in chunks])
            draft = DocumentDraft(
                collection=collection,
                source_path=source,
                title=title or loaded.title,
                file_type=loaded.file_type,
                size_bytes=len(raw),
                content_hash=digest,
            )
            document_id, replaced = self.kb.replace_document(draft, chunks, vectors)
        except (LoadError, OSError) as error:
            return FileResult(shown, "failed", str(error))
        return FileResult(
            shown, "updated" if replaced else "added", chunks=len(chunks), document_id=document_id
        )

"""The ingest pipeline: discover files → read + hash → load → clean → chunk → deduplicate → embed → write.

Parsing (load, clean, chunk, signatures) runs in a thread pool ahead of the main thread, which removes
duplicates in file order (so which copy is kept never depends on timing), embeds the chunks of many files
at once, longest first, and writes them in groups: one SQL transaction per group, which also holds the
deletes and hash updates of the same files. A crash therefore leaves whole documents or nothing; a file
whose documents do not all carry its current hash is simply processed again by the next run. The vector
and lexical indexes are synced with SQL once at the end (any reader syncs them by version meanwhile).

A file that fails is reported with its reason and the batch goes on; an unchanged file (same content hash
for every document it gave) is not even parsed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from itertools import chain
from pathlib import Path
from typing import Literal

import numpy as np

from ingest.chunker import Chunk, Chunker
from ingest.cleaning import clean_document
from ingest.config import ChunkerConfig, IngestConfig
from ingest.dedup import NearDuplicateIndex, Signature, best_match, signature, text_hash
from ingest.loaders import LoadedDocument, LoadError, display_name, is_supported, load_file, read_file
from retriever.records import DocumentDraft, DocumentFingerprint, DocumentWrite
from retriever.store import KnowledgeBase

log = logging.getLogger(__name__)

FileStatus = Literal["added", "updated", "unchanged", "duplicate", "skipped", "failed"]
STAGES = ("load", "clean", "chunk", "dedup", "embed", "write")


@dataclass(frozen=True)
class Source:
    """A file to ingest: where its bytes are, the key its documents are stored under, how reports name it."""

    path: Path
    key: str
    shown: str
    title: str | None = None  # overrides the title the loader finds (for a file that is one document)

    @classmethod
    def of(cls, path: Path) -> Source:
        return cls(path, display_name(Path(os.path.abspath(path))), display_name(path))


@dataclass(frozen=True)
class Duplicate:
    """Content dropped as a copy of something already kept: a whole document (chunks == 0) or chunks."""

    chunks: int
    of_source: str
    of_title: str
    similarity: float


@dataclass(frozen=True)
class FileResult:
    path: str
    status: FileStatus
    reason: str = ""
    chunks: int = 0  # chunks written (or, for an unchanged file, stored)
    document_id: int | None = None  # for a file that is one document
    documents: int = 0  # documents written or unchanged
    duplicates: tuple[Duplicate, ...] = ()


@dataclass(frozen=True)
class Progress:
    files_done: int
    files_total: int
    chunks_written: int


@dataclass
class IngestReport:
    results: list[FileResult] = field(default_factory=list)
    seconds: float = 0.0
    pruned: list[str] = field(default_factory=list)
    # Busy seconds per stage, summed over the threads that ran it (parsing overlaps embedding).
    stages: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))

    @property
    def counts(self) -> Counter[str]:
        return Counter(result.status for result in self.results)

    @property
    def chunks_written(self) -> int:
        return sum(r.chunks for r in self.results if r.status in ("added", "updated"))

    @property
    def duplicates(self) -> list[tuple[str, Duplicate]]:
        return [(r.path, d) for r in self.results for d in r.duplicates]


def discover(paths: Iterable[Path]) -> list[Path]:
    """Files under the given paths: folders are walked (hidden entries skipped, links to folders not
    followed, so a link loop cannot trap the walk); files named explicitly are kept whatever their type,
    so an unsupported one is reported, not ignored."""
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


# -- what the parsing threads hand to the main thread ---------------------------------------------------


@dataclass
class _Prepared:
    """One document, parsed: the hash of its cleaned text, its chunks and their signatures."""

    loaded: LoadedDocument
    source_path: str
    clean_text: str
    text_hash: str
    size_bytes: int
    chunks: list[Chunk]
    signatures: list[Signature | None]  # per chunk; None when too short to compare
    document_signature: Signature | None


@dataclass(frozen=True)
class _Document:
    """A document of `source` being parsed; the future gives None when it has no text."""

    source: Source
    digest: str
    future: Future[_Prepared | None]


@dataclass(frozen=True)
class _FileDone:
    """All of a file's documents were queued before this; `status` is set when it gave none."""

    source: Source
    digest: str = ""
    status: FileStatus | None = None  # failed, skipped or unchanged
    reason: str = ""
    note: str = ""


@dataclass(frozen=True)
class _Ref:
    """The owner of an indexed signature: a document stored before this run, or one kept during it."""

    source_path: str
    title: str
    stored: bool


@dataclass
class _FileState:
    source: Source
    existing: dict[str, DocumentFingerprint]
    digest: str = ""
    live: set[str] = field(default_factory=set)  # its documents written or found unchanged in this run
    written: int = 0
    unchanged: int = 0
    removed: int = 0
    chunks: int = 0
    duplicates: list[Duplicate] = field(default_factory=list)
    duplicate_documents: int = 0
    notes: list[str] = field(default_factory=list)
    failures: int = 0
    pending: int = 0  # operations waiting in the current batch
    done: _FileDone | None = None
    document_ids: list[int] = field(default_factory=list)


_Kept = list[tuple[Chunk, Signature | None]]  # the chunks of a document that are written, with signatures


@dataclass
class _Batch:
    writes: list[tuple[_FileState, _Prepared, _Kept]] = field(default_factory=list)
    touches: list[tuple[_FileState, int]] = field(default_factory=list)
    deletes: list[tuple[_FileState, int]] = field(default_factory=list)
    chunks: int = 0

    def __bool__(self) -> bool:
        return bool(self.writes or self.touches or self.deletes)


class _Stages:
    """Busy time per stage, added up from several threads."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self._lock = threading.Lock()

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - started
            with self._lock:
                self.seconds[stage] += elapsed


class Ingestor:
    def __init__(self, kb: KnowledgeBase, chunker: ChunkerConfig, config: IngestConfig | None = None) -> None:
        self.kb = kb
        self.config = config or IngestConfig()
        self.chunker = Chunker(chunker, kb.embedder.count_tokens, kb.embedder.max_content_tokens, kb.passage)
        # One pool for every run: its threads (and the tokenizer copy each keeps) outlive a single upload.
        self.pool = ThreadPoolExecutor(self.config.workers, thread_name_prefix="ingest-worker")

    def ingest_paths(
        self,
        paths: Sequence[Path],
        collection: str,
        on_result: Callable[[FileResult], None] | None = None,
        prune: bool = False,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> IngestReport:
        """Ingest files and folders; with `prune`, first remove the documents of files under `paths` that
        are no longer there."""
        sources = [Source.of(path) for path in discover(paths)]
        roots = [display_name(Path(os.path.abspath(path))) for path in paths] if prune else []
        return self.ingest(sources, collection, on_result, roots, on_progress)

    def ingest_file(
        self, path: Path, collection: str, source_path: str | None = None, title: str | None = None
    ) -> FileResult:
        """Ingest one file; `source_path` identifies its documents (default: the absolute path)."""
        source = Source.of(path)
        source = Source(path, source_path or source.key, source.shown, title)
        return self.ingest([source], collection).results[0]

    def ingest(
        self,
        sources: Sequence[Source],
        collection: str,
        on_result: Callable[[FileResult], None] | None = None,
        prune_roots: Sequence[str] = (),
        on_progress: Callable[[Progress], None] | None = None,
    ) -> IngestReport:
        """Ingest `sources` (a file listed twice counts once); `prune_roots` are folders or files whose
        stored documents are deleted when their file is not among `sources`."""
        unique = list({source.key: source for source in reversed(sources)}.values())[::-1]
        return _Run(self, collection, on_result, on_progress).run(unique, prune_roots)

    def prepare(self, source: Source, loaded: LoadedDocument, size: int, stages: _Stages) -> _Prepared | None:
        """Clean, chunk and sign one document (in a worker thread); None when no text is left."""
        if source.title:
            loaded = replace(loaded, title=source.title)
        with stages.timed("clean"):
            cleaned = clean_document(loaded)
        if not cleaned.text:
            return None
        with stages.timed("chunk"):
            chunks = self.chunker.chunk(cleaned.text, loaded.title, cleaned.page_starts)
        with stages.timed("dedup"):
            signatures = [signature(chunk.draft.text) for chunk in chunks]
            whole: Signature | None = None
            for sig in signatures:
                if sig is not None:
                    whole = sig if whole is None else whole.union(sig)
            minimum = self.config.dedup_min_shingles
            signatures = [sig if sig is not None and sig.shingles >= minimum else None for sig in signatures]
            digest = text_hash(cleaned.text)
        source_path = f"{source.key}#{loaded.key}" if loaded.key else source.key
        size_bytes = len(cleaned.text.encode("utf-8")) if loaded.key else size
        return _Prepared(loaded, source_path, cleaned.text, digest, size_bytes, chunks, signatures, whole)


class _Run:
    """One ingest run of a list of sources into one collection."""

    def __init__(
        self,
        ingestor: Ingestor,
        collection: str,
        on_result: Callable[[FileResult], None] | None,
        on_progress: Callable[[Progress], None] | None,
    ) -> None:
        self.ingestor = ingestor
        self.kb = ingestor.kb
        self.config = ingestor.config
        self.collection = collection
        self.on_result = on_result
        self.on_progress = on_progress
        self.stages = _Stages()
        self.report = IngestReport()
        self.files_total = 0
        self.chunks_written = 0
        self.batch = _Batch()
        self.states: dict[str, _FileState] = {}
        self.existing: dict[str, dict[str, DocumentFingerprint]] = defaultdict(dict)
        # Duplicate detection: exact text hashes, and MinHash LSH over documents and over chunks. What was
        # stored before this run is looked up in SQL (by text hash and band key, a document at a time); the
        # indexes here hold what this run kept.
        self.exact: dict[str, _Ref] = {}
        self.documents: NearDuplicateIndex[_Ref] = NearDuplicateIndex(self.config.dedup_threshold)
        self.chunks: NearDuplicateIndex[_Ref] = NearDuplicateIndex(self.config.dedup_threshold)
        self.had_documents = False  # whether the collection held any document when the run began
        self.superseded: set[str] = set()  # stored documents this run rewrites or deletes
        self.producer_error: BaseException | None = None

    def run(self, sources: Sequence[Source], prune_roots: Sequence[str]) -> IngestReport:
        started = time.perf_counter()
        self.kb.ensure_collection(self.collection)
        self.kb.use_band_rows(self.collection, self.chunks.rows)
        if prune_roots:
            self._prune(sources, prune_roots)
        self.had_documents = self.kb.has_documents(self.collection)
        for fingerprint in self.kb.fingerprints(self.collection, [source.key for source in sources]):
            self.existing[fingerprint.source_file][fingerprint.source_path] = fingerprint
        self.files_total = len(sources)
        stop = threading.Event()
        items: queue.Queue[_Document | _FileDone | None] = queue.Queue(maxsize=2 * self.config.batch_chunks)
        producer = threading.Thread(target=self._produce, args=(sources, items, stop), name="ingest-parse")
        producer.start()
        try:
            while (item := items.get()) is not None:
                if isinstance(item, _FileDone):
                    self._file_done(item)
                else:
                    self._document(item)
                if self.batch.chunks >= self.config.batch_chunks:
                    self._flush()
            self._flush()
        finally:
            stop.set()
            producer.join()
        if self.producer_error is not None:
            raise RuntimeError("reading the files failed") from self.producer_error
        with self.stages.timed("write"):
            self.kb.sync_indexes(self.collection)
        self.report.stages = dict(self.stages.seconds)
        self.report.seconds = time.perf_counter() - started
        return self.report

    def _prune(self, sources: Sequence[Source], roots: Sequence[str]) -> None:
        present = {source.key for source in sources}
        prefixes = tuple(root.rstrip(os.sep) + os.sep for root in roots)
        gone = {
            fingerprint.id: fingerprint.source_path
            for fingerprint in self.kb.fingerprints(self.collection, roots, prefixes)
            if fingerprint.source_file not in present
        }
        if gone:
            with self.stages.timed("write"):
                self.kb.write_batch(self.collection, [], deletes=list(gone), update_indexes=False)
        self.report.pruned = sorted(gone.values())

    # -- producer ----------------------------------------------------------------------------------------

    def _produce(
        self,
        sources: Sequence[Source],
        items: queue.Queue[_Document | _FileDone | None],
        stop: threading.Event,
    ) -> None:
        """Queue each file's documents, as futures of the worker pool, in file order, then its _FileDone."""

        def put(item: _Document | _FileDone | None) -> bool:
            while not stop.is_set():
                try:
                    items.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        try:
            for source in sources:
                done, documents, size = self._open(source)
                for document in documents:
                    future = self.ingestor.pool.submit(
                        self.ingestor.prepare, source, document, size, self.stages
                    )
                    if not put(_Document(source, done.digest, future)):
                        return
                if not put(done):
                    return
        except BaseException as error:  # handed to the main thread, which would otherwise wait forever
            self.producer_error = error
        put(None)

    def _open(self, source: Source) -> tuple[_FileDone, list[LoadedDocument], int]:
        """Read, hash and load a file: its documents, or a _FileDone saying why there are none."""
        with self.stages.timed("load"):
            try:
                raw = read_file(source.path, self.config.max_file_bytes)
            except LoadError as error:
                return _FileDone(source, status="failed", reason=str(error)), [], 0
            except OSError as error:
                return (
                    _FileDone(source, status="failed", reason=f"cannot read: {error.strerror or error}"),
                    [],
                    0,
                )
            if not raw.strip():
                return _FileDone(source, status="skipped", reason="empty file"), [], 0
            digest = content_hash(raw)
            existing = self.existing.get(source.key, {})
            if existing and all(fp.content_hash == digest for fp in existing.values()):
                return _FileDone(source, digest, status="unchanged"), [], len(raw)
            try:
                loaded = load_file(source.path, raw, self.config)
            except LoadError as error:
                return _FileDone(source, digest, status="failed", reason=str(error)), [], len(raw)
            except Exception as error:  # a loader choking on one odd file must not stop the batch
                log.exception("loading %s failed", source.shown)
                reason = f"could not be loaded ({type(error).__name__}: {error})"
                return _FileDone(source, digest, status="failed", reason=reason), [], len(raw)
        return _FileDone(source, digest, note=loaded.note), loaded.documents, len(raw)

    # -- consumer: duplicates, batches, results ----------------------------------------------------------

    def _state(self, source: Source, digest: str) -> _FileState:
        state = self.states.get(source.key)
        if state is None:
            state = _FileState(source, self.existing.get(source.key, {}), digest)
            self.states[source.key] = state
        return state

    def _document(self, item: _Document) -> None:
        state = self._state(item.source, item.digest)
        try:
            prepared = item.future.result()
        except Exception as error:  # one bad record of a multi-document file must not stop the others
            log.exception("parsing a document of %s failed", item.source.shown)
            state.failures += 1
            state.notes.append(f"a document could not be parsed ({type(error).__name__}: {error})")
            return
        if prepared is not None:
            self._classify(state, prepared)

    def _classify(self, state: _FileState, document: _Prepared) -> None:
        """Decide what becomes of one parsed document: unchanged, duplicate, or written (minus the chunks
        that duplicate earlier ones)."""
        existing = state.existing.get(document.source_path)
        if existing is not None and existing.text_hash == document.text_hash:
            state.live.add(document.source_path)
            state.unchanged += 1
            state.document_ids.append(existing.id)
            if existing.content_hash != state.digest:
                self.batch.touches.append((state, existing.id))
                state.pending += 1
            return
        with self.stages.timed("dedup"):
            original = self._duplicate_document(document)
            kept: _Kept = []
            dropped: dict[_Ref, tuple[int, float]] = {}
            if original is None:
                kept, dropped = self._unique_chunks(document)
                if not kept and dropped:
                    ref = max(dropped, key=lambda r: dropped[r][0])
                    original, dropped = (ref, dropped[ref][1]), {}
        if original is not None:
            ref, similarity = original
            state.duplicates.append(Duplicate(0, ref.source_path, ref.title, similarity))
            state.duplicate_documents += 1
            return
        state.duplicates += [Duplicate(n, r.source_path, r.title, sim) for r, (n, sim) in dropped.items()]
        ref = _Ref(document.source_path, document.loaded.title, stored=False)
        self.exact.setdefault(document.text_hash, ref)
        if document.document_signature is not None:
            self.documents.add(ref, document.document_signature)
        self.superseded.add(document.source_path)
        state.live.add(document.source_path)
        self.batch.writes.append((state, document, kept))
        self.batch.chunks += len(kept)
        state.pending += 1

    def _ignored(self, document: _Prepared) -> Callable[[_Ref], bool]:
        """Stored signatures that no longer count: the document's own earlier version, and documents this
        run has written (compared from this run's own indexes) or deleted."""
        return lambda ref: (
            ref.stored and (ref.source_path == document.source_path or ref.source_path in self.superseded)
        )

    def _duplicate_document(self, document: _Prepared) -> tuple[_Ref, float] | None:
        """The document this one repeats: the same text, else the most similar signature; stored documents
        before this run's, as in the order they were written."""
        ignored = self._ignored(document)
        sig = document.document_signature
        stored: list[tuple[_Ref, Signature]] = []
        if self.had_documents:
            keys = sig.band_keys(self.documents.rows) if sig is not None else []
            for _, source_path, title, text_hash, blob in self.kb.document_candidates(
                self.collection, document.text_hash, keys
            ):
                ref = _Ref(source_path, title, stored=True)
                if text_hash == document.text_hash and not ignored(ref):
                    return ref, 1.0
                if blob is not None:
                    stored.append((ref, Signature.from_bytes(blob)))
        exact = self.exact.get(document.text_hash)
        if exact is not None and not ignored(exact):
            return exact, 1.0
        if sig is None:
            return None
        return best_match(
            sig, chain(stored, self.documents.candidates(sig)), self.config.dedup_threshold, ignored
        )

    def _unique_chunks(self, document: _Prepared) -> tuple[_Kept, dict[_Ref, tuple[int, float]]]:
        """The chunks that do not repeat an earlier chunk (of this document too), and per original
        document the number of chunks dropped and their highest similarity."""
        ignored = self._ignored(document)
        ref = _Ref(document.source_path, document.loaded.title, stored=False)
        stored = self._stored_candidates(document.signatures)
        kept: _Kept = []
        dropped: dict[_Ref, tuple[int, float]] = {}
        for chunk, sig, earlier in zip(document.chunks, document.signatures, stored, strict=True):
            match = None
            if sig is not None:
                # Stored chunks first, then this run's: the order one index of both would have.
                candidates = chain(earlier, self.chunks.candidates(sig))
                match = best_match(sig, candidates, self.config.dedup_threshold, ignored)
            if match is None:
                kept.append((chunk, sig))
                if sig is not None:
                    self.chunks.add(ref, sig)
                continue
            original, similarity = match
            count, best = dropped.get(original, (0, 0.0))
            dropped[original] = (count + 1, max(best, similarity))
        return kept, dropped

    def _stored_candidates(self, signatures: list[Signature | None]) -> list[list[tuple[_Ref, Signature]]]:
        """Per signature, the chunks of documents stored before this run that share a band with it, in the
        order they were written: one SQL lookup of the document's band keys, never the whole collection."""
        keys = [sig.band_keys(self.chunks.rows) if sig is not None else [] for sig in signatures]
        wanted = [key for own in keys for key in own]
        rows = self.kb.chunk_candidates(self.collection, wanted) if wanted and self.had_documents else []
        by_key: defaultdict[int, list[tuple[int, _Ref, bytes]]] = defaultdict(list)
        for key, chunk_id, _, source_path, title, blob in rows:
            # The documents this run wrote are among them, and ignored (`superseded`): their chunks are
            # compared from `self.chunks`.
            by_key[key].append((chunk_id, _Ref(source_path, title, stored=True), blob))
        found: list[list[tuple[_Ref, Signature]]] = []
        for own in keys:
            shared = {chunk_id: (ref, blob) for key in own for chunk_id, ref, blob in by_key.get(key, ())}
            found.append([(ref, Signature.from_bytes(blob)) for _, (ref, blob) in sorted(shared.items())])
        return found

    def _file_done(self, done: _FileDone) -> None:
        state = self._state(done.source, done.digest)
        state.done = done
        if done.note:
            state.notes.append(done.note)
        if done.status == "unchanged":
            state.unchanged = len(state.existing)
            state.document_ids = [fingerprint.id for fingerprint in state.existing.values()]
        if done.status in (None, "skipped"):
            # What the file no longer holds (records gone, now empty, now a duplicate) leaves SQL with it.
            for source_path, fingerprint in state.existing.items():
                if source_path not in state.live:
                    self.batch.deletes.append((state, fingerprint.id))
                    self.superseded.add(source_path)
                    state.pending += 1
                    state.removed += 1
        if state.pending == 0:
            self._finish(state)

    def _flush(self) -> None:
        batch, self.batch = self.batch, _Batch()
        if not batch:
            return
        texts = [chunk.embed_text for _, _, kept in batch.writes for chunk, _ in kept]
        tokens = np.array([chunk.draft.token_count for _, _, kept in batch.writes for chunk, _ in kept])
        order = np.argsort(-tokens, kind="stable")  # longest first: batches of similar length pad least
        with self.stages.timed("embed"):
            embedded = self.kb.embedder.embed([texts[i] for i in order])
        vectors = np.empty_like(embedded)
        vectors[order] = embedded
        writes = []
        offset = 0
        for state, document, kept in batch.writes:
            drafts = [
                replace(chunk.draft, ordinal=ordinal, minhash=sig.to_bytes() if sig is not None else None)
                for ordinal, (chunk, sig) in enumerate(kept)
            ]
            draft = DocumentDraft(
                collection=self.collection,
                source_path=document.source_path,
                title=document.loaded.title,
                file_type=document.loaded.file_type,
                size_bytes=document.size_bytes,
                content_hash=state.digest,
                source_file=state.source.key,
                text_hash=document.text_hash,
                minhash=document.document_signature.to_bytes() if document.document_signature else None,
                clean_text=document.clean_text,
            )
            writes.append(DocumentWrite(draft, drafts, vectors[offset : offset + len(kept)]))
            offset += len(kept)
        with self.stages.timed("write"):
            written = self.kb.write_batch(
                self.collection,
                writes,
                touches=[(document_id, state.digest) for state, document_id in batch.touches],
                deletes=[document_id for _, document_id in batch.deletes],
                update_indexes=False,
            )
        for (state, _, kept), (document_id, _) in zip(batch.writes, written, strict=True):
            state.document_ids.append(document_id)
            state.written += 1
            state.chunks += len(kept)
        self.chunks_written += batch.chunks
        touched = [state for state, *_ in batch.writes] + [
            state for state, _ in batch.touches + batch.deletes
        ]
        for state in {id(state): state for state in touched}.values():
            state.pending = 0
            if state.done is not None:
                self._finish(state)
        self._progress()

    def _finish(self, state: _FileState) -> None:
        done = state.done
        assert done is not None
        status, reason = _outcome(state, done)
        result = FileResult(
            path=state.source.shown,
            status=status,
            reason=reason,
            chunks=state.chunks,
            document_id=state.document_ids[0] if len(state.document_ids) == 1 else None,
            documents=state.written + state.unchanged,
            duplicates=tuple(state.duplicates),
        )
        del self.states[state.source.key]
        self.report.results.append(result)
        if self.on_result is not None:
            self.on_result(result)
        self._progress()

    def _progress(self) -> None:
        if self.on_progress is not None:
            self.on_progress(Progress(len(self.report.results), self.files_total, self.chunks_written))


def _outcome(state: _FileState, done: _FileDone) -> tuple[FileStatus, str]:
    notes = list(state.notes)
    if state.duplicate_documents and not state.written:
        first = next(d for d in state.duplicates if d.chunks == 0)
        notes.insert(
            0, f"duplicate of {first.of_title!r} ({first.of_source}), similarity {first.similarity:.2f}"
        )
    elif state.duplicate_documents:
        notes.append(f"{state.duplicate_documents} duplicate document(s) left out")
    dropped = sum(d.chunks for d in state.duplicates)
    if dropped:
        notes.append(f"{dropped} duplicate chunk(s) left out")
    if state.removed:
        notes.append(f"{state.removed} earlier document(s) removed")
    reason = "; ".join(notes)
    if done.status is not None:
        return done.status, "; ".join(filter(None, [done.reason, reason]))
    if state.written:
        return ("updated" if state.existing else "added"), reason
    if state.duplicate_documents:
        return "duplicate", reason
    if state.failures:
        return "failed", reason
    if state.unchanged:
        return ("updated" if state.removed else "unchanged"), reason
    return "skipped", "; ".join(filter(None, ["no text after cleaning", reason]))

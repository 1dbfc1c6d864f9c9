"""Background ingest jobs: files uploaded together are staged in a folder of the job's own, recorded in SQL
(`ingest_jobs`, `ingest_job_files`), and ingested while the client polls `GET /v1/jobs/{id}` on any replica.

Who runs a job:
- without a broker (the embedded default), a worker thread of the API process that took the upload, one job
  at a time in arrival order. A process that starts resumes the unfinished jobs that dead processes of its
  host left behind: their staged files are still there.
- with `ARCHIVIST_BROKER_URL`, whichever `archivist worker` the broker hands it to (`app.ops.worker`). Its
  message is acknowledged only when the job ends, so a job whose worker was killed goes to another worker,
  which ingests the files that have no result yet (a file ingested twice is `unchanged` the second time).

Either way `run_job` does the work, and only it deletes the job's folder, once the job has ended.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import shutil
import socket
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Literal

from sqlalchemy import func, select, update

from app.models import IngestJob, IngestJobFile
from app.ops.uploads import (
    KEPT,
    UploadTooLargeError,
    keep,
    numbered,
    process_alive,
    remove_abandoned_staging,
    source_key,
    stage,
)
from ingest.pipeline import Duplicate, FileResult, Ingestor, Progress, Source
from retriever.db import Database
from retriever.records import NotFoundError

log = logging.getLogger(__name__)

JobState = Literal["queued", "running", "done", "failed"]
BROKER = "broker"  # the runner of a job any `archivist worker` may take; `broker:<host>+<pid>` once one has


def this_process() -> str:
    """How a job names the API process that runs it in a thread: `<host>+<pid>`."""
    return f"{socket.gethostname()}+{os.getpid()}"


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Job:
    id: str
    collection: str
    files_total: int
    state: JobState = "queued"
    files_done: int = 0
    chunks_written: int = 0
    results: list[FileResult] = field(default_factory=list)
    error: str = ""
    created_at: datetime = field(default_factory=_now)
    started_at: datetime | None = None
    finished_at: datetime | None = None


def job_folder(upload_dir: Path, job_id: str) -> Path:
    """Where a job's files are staged, `<position>/<name>` each (so `a` and `a/b.txt` can both be)."""
    return upload_dir / ".jobs" / job_id


def result_to_json(result: FileResult) -> dict[str, Any]:
    return dataclasses.asdict(result)


def result_from_json(stored: dict[str, Any]) -> FileResult:
    duplicates = tuple(Duplicate(**duplicate) for duplicate in stored.get("duplicates", ()))
    return FileResult(**{**stored, "duplicates": duplicates})


def _as_utc(moment: datetime | None) -> datetime | None:
    """SQLite hands timestamps back without their zone; every one stored is UTC."""
    return moment.replace(tzinfo=timezone.utc) if moment is not None and moment.tzinfo is None else moment


def _job(row: IngestJob, with_results: bool = True) -> Job:
    results = [result_from_json(f.result) for f in row.files if f.result is not None] if with_results else []
    return Job(
        id=row.id,
        collection=row.collection,
        files_total=row.files_total,
        state=row.state,  # type: ignore[arg-type]
        files_done=row.files_done,
        chunks_written=row.chunks_written,
        results=results,
        error=row.error,
        created_at=_as_utc(row.created_at) or _now(),
        started_at=_as_utc(row.started_at),
        finished_at=_as_utc(row.finished_at),
    )


class JobStore:
    """The jobs' rows: what every replica reads and whoever runs a job writes."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, job_id: str, collection: str, names: Sequence[str], runner: str) -> None:
        with self.db.session() as session:
            files = [IngestJobFile(position=n, name=name) for n, name in enumerate(names)]
            session.add(IngestJob(id=job_id, collection=collection, state="queued", runner=runner,
                                  files_total=len(names), files_done=0, chunks_written=0, attempts=0,
                                  error="", files=files))  # fmt: skip

    def get(self, job_id: str) -> Job:
        with self.db.session() as session:
            row = session.get(IngestJob, job_id)
            if row is None:
                raise NotFoundError(f"job {job_id} does not exist")
            return _job(row)

    def newest(self, limit: int) -> list[Job]:
        """The newest `limit` jobs, newest first, without their per-file results."""
        query = select(IngestJob).order_by(IngestJob.created_at.desc(), IngestJob.id).limit(limit)
        with self.db.session() as session:
            return [_job(row, with_results=False) for row in session.scalars(query)]

    def counts(self) -> dict[str, int]:
        """How many kept jobs are in each state."""
        query = select(IngestJob.state, func.count()).group_by(IngestJob.state)
        with self.db.session() as session:
            return {state: int(count) for state, count in session.execute(query)}

    def pending(self, job_id: str) -> list[tuple[int, str]]:
        """(position, name) of the files that have no result yet."""
        query = select(IngestJobFile.position, IngestJobFile.name).where(
            IngestJobFile.job_id == job_id, IngestJobFile.result.is_(None)
        )
        with self.db.session() as session:
            return [
                (position, name) for position, name in session.execute(query.order_by(IngestJobFile.position))
            ]

    def start(self, job_id: str, runner: str | None = None) -> Job | None:
        """Mark the job running (one more attempt), by `runner` when given; None when it has ended or is
        gone."""
        with self.db.session() as session:
            row = session.get(IngestJob, job_id, with_for_update=True)
            if row is None or row.state in ("done", "failed"):
                return None
            row.state, row.attempts = "running", row.attempts + 1
            row.runner = runner or row.runner
            row.started_at = row.started_at or _now()
            return _job(row, with_results=False)

    def record(self, job_id: str, position: int, result: FileResult) -> None:
        """A file's result, once: a file ingested again by a retried job keeps its first result."""
        with self.db.session() as session:
            recorded = session.execute(
                update(IngestJobFile)
                .where(IngestJobFile.job_id == job_id, IngestJobFile.position == position)
                .where(IngestJobFile.result.is_(None))
                .values(result=result_to_json(result))
            )
            if recorded.rowcount:  # type: ignore[attr-defined]
                session.execute(
                    update(IngestJob)
                    .where(IngestJob.id == job_id)
                    .values(files_done=IngestJob.files_done + 1)
                )

    def progress(self, job_id: str, chunks_written: int) -> None:
        with self.db.session() as session:
            session.execute(
                update(IngestJob).where(IngestJob.id == job_id).values(chunks_written=chunks_written)
            )

    def finish(self, job_id: str, state: JobState, error: str = "") -> None:
        with self.db.session() as session:
            session.execute(
                update(IngestJob)
                .where(IngestJob.id == job_id)
                .values(state=state, error=error, finished_at=_now())
            )

    def claim_orphans(self, host: str, runner: str) -> list[str]:
        """Take over the unfinished jobs that dead processes of `host` ran in a thread; their ids, oldest
        first."""
        query = (
            select(IngestJob)
            .where(IngestJob.state.in_(("queued", "running")), IngestJob.runner.startswith(f"{host}+"))
            .order_by(IngestJob.created_at)
        )
        claimed = []
        with self.db.session() as session:
            for row in session.scalars(query.with_for_update()):
                pid = row.runner.removeprefix(f"{host}+")
                if row.runner != runner and pid.isdigit() and not process_alive(int(pid)):
                    row.runner = runner
                    claimed.append(row.id)
        return claimed

    def prune(self, keep_jobs: int) -> None:
        """Forget ended jobs beyond the newest `keep_jobs` (what they wrote stays, like any ingest)."""
        with self.db.session() as session:
            newest = select(IngestJob.id).order_by(IngestJob.created_at.desc()).limit(keep_jobs)
            old = session.scalars(
                select(IngestJob).where(IngestJob.state.in_(("done", "failed")), IngestJob.id.not_in(newest))
            )
            for row in old:
                session.delete(row)


def run_job(
    store: JobStore,
    job_id: str,
    ingestor: Ingestor,
    upload_dir: Path,
    on_result: Callable[[FileResult], None] | None = None,
    runner: str | None = None,
) -> None:
    """Ingest the files of job `job_id` that have no result yet, record each result, delete the job's
    folder and end the job. An exception from the ingest fails the job; a killed process leaves it running,
    with its folder, for whoever runs it again. `runner` names who runs it now, when that changes."""
    job = store.start(job_id, runner)
    if job is None:
        return
    folder = job_folder(upload_dir, job_id)
    pending = store.pending(job_id)
    positions = {name: position for position, name in pending}
    sources = [
        Source(folder / str(position) / name, source_key(job.collection, name), name)
        for position, name in pending
    ]
    chunks_before = job.chunks_written

    def progress(state: Progress) -> None:
        store.progress(job_id, chunks_before + state.chunks_written)

    def result(found: FileResult) -> None:
        position = positions[found.path]
        if found.status in KEPT:
            keep(folder / str(position) / found.path, found.path, upload_dir, job.collection)
        store.record(job_id, position, found)
        if on_result is not None:
            on_result(found)

    failure = ""
    try:
        ingestor.ingest(sources, job.collection, on_result=result, on_progress=progress)
    except Exception as error:  # the job fails; whoever runs jobs goes on with the next one
        log.exception("ingest job %s failed", job_id)
        failure = f"{type(error).__name__}: {error}"
    # The folder goes first, so that a job seen ended has no staged file left; a process killed in between
    # leaves the job running with every file recorded, and whoever runs it again only ends it.
    shutil.rmtree(folder, ignore_errors=True)
    store.finish(job_id, "failed" if failure else "done", failure)


class JobManager:
    """Takes uploads as jobs: stages their files, records them, and hands each to its runner: `dispatch`
    (the broker) when given, else a worker thread of this process."""

    def __init__(
        self,
        store: JobStore,
        ingestor: Callable[[], Ingestor],
        upload_dir: Path,
        on_result: Callable[[FileResult], None] | None = None,
        dispatch: Callable[[str], None] | None = None,
        keep_jobs: int = 200,
    ) -> None:
        self.store = store
        self.upload_dir = upload_dir
        self._ingestor = ingestor
        self._on_result = on_result
        self._dispatch = dispatch
        self._keep = keep_jobs
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        remove_abandoned_staging(upload_dir)  # single-file uploads that dead processes of this host left
        if dispatch is None:
            self._worker = threading.Thread(target=self._work, name="ingest-jobs", daemon=True)
            self._worker.start()
            for job_id in store.claim_orphans(socket.gethostname(), this_process()):
                log.info("resuming ingest job %s, left unfinished by a process that stopped", job_id)
                self._queue.put(job_id)

    def submit(self, collection: str, uploads: Sequence[tuple[str, BinaryIO]], max_bytes: int) -> Job:
        """Stage every upload (its name made by `safe_filename`; one over `max_bytes` fails alone) and hand
        the job to its runner; a name the upload already used gets a numbered suffix."""
        names: list[str] = []
        for base, _ in uploads:
            name, number = base, 1
            while name in names:
                number += 1
                name = numbered(base, number)
            names.append(name)
        job_id = uuid.uuid4().hex
        folder = job_folder(self.upload_dir, job_id)
        refused: list[tuple[int, FileResult]] = []
        for position, (name, (_, stream)) in enumerate(zip(names, uploads, strict=True)):
            try:
                stage(stream, folder / str(position), name, max_bytes)
            except UploadTooLargeError as error:
                refused.append((position, FileResult(name, "failed", str(error).removeprefix(f"{name}: "))))
        self.store.create(job_id, collection, names, BROKER if self._dispatch else this_process())
        for position, result in refused:
            self.store.record(job_id, position, result)
            if self._on_result is not None:
                self._on_result(result)
        self.store.prune(self._keep)
        if self._dispatch is None:
            self._queue.put(job_id)
        else:
            try:
                self._dispatch(job_id)
            except Exception as error:
                self.store.finish(job_id, "failed", f"the job could not be handed to a worker: {error}")
                shutil.rmtree(folder, ignore_errors=True)
                raise
        return self.store.get(job_id)

    def get(self, job_id: str) -> Job:
        return self.store.get(job_id)

    def recent(self) -> list[Job]:
        return self.store.newest(self._keep)

    def close(self) -> None:
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join(timeout=5)

    def _work(self) -> None:
        while (job_id := self._queue.get()) is not None:
            try:
                run_job(self.store, job_id, self._ingestor(), self.upload_dir, self._on_result)
            except Exception:  # the database failing under it: the thread goes on with the next job
                log.exception("ingest job %s could not be run", job_id)

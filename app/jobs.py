"""Background ingest jobs: files uploaded together are staged on disk, then ingested by one worker thread
while the client polls `GET /v1/jobs/{id}` for progress and per-file results.

One worker runs the jobs in order, so a large upload never competes with another for the embedder. Jobs
live in memory (the last `keep` of them): after a restart their ids are gone, but whatever they wrote is
in SQL like any other ingest, and staged files left behind by a crash are removed at start.
"""

from __future__ import annotations

import logging
import queue
import shutil
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO, Literal

from app.uploads import (
    KEPT,
    UploadTooLargeError,
    keep,
    numbered,
    remove_abandoned_staging,
    source_key,
    stage,
    staging_folder,
)
from ingest.pipeline import FileResult, Ingestor, Progress, Source
from retriever.store import NotFoundError

log = logging.getLogger(__name__)

JobState = Literal["queued", "running", "done", "failed"]


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
    staged: dict[str, Path] = field(default_factory=dict)  # each file's name in the upload -> staged copy
    folder: Path | None = None


class JobManager:
    def __init__(
        self,
        ingestor: Callable[[], Ingestor],
        upload_dir: Path,
        on_result: Callable[[FileResult], None] | None = None,
        keep_jobs: int = 200,
    ) -> None:
        self._ingestor = ingestor
        self.upload_dir = upload_dir
        self._on_result = on_result
        self._keep = keep_jobs
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        remove_abandoned_staging(upload_dir)  # staged by a process that died, not by a live replica
        self._worker = threading.Thread(target=self._work, name="ingest-jobs", daemon=True)
        self._worker.start()

    def submit(self, collection: str, uploads: Sequence[tuple[str, BinaryIO]], max_bytes: int) -> Job:
        """Stage every upload (its name made by `safe_filename`; one over `max_bytes` fails alone) and queue
        the job; a name the upload already used gets a numbered suffix."""
        names: list[str] = []
        for base, _ in uploads:
            name, number = base, 1
            while name in names:
                number += 1
                name = numbered(base, number)
            names.append(name)
        job = Job(uuid.uuid4().hex, collection, len(uploads), folder=staging_folder(self.upload_dir))
        assert job.folder is not None
        for index, (name, (_, stream)) in enumerate(zip(names, uploads, strict=True)):
            try:  # a folder of its own for each file: `a` and `a/b.txt` can both be staged
                job.staged[name] = stage(stream, job.folder / str(index), name, max_bytes)
            except UploadTooLargeError as error:
                self._record(job, FileResult(name, "failed", str(error).removeprefix(f"{name}: ")))
        with self._lock:
            self._jobs[job.id] = job
            while len(self._jobs) > self._keep:
                self._jobs.popitem(last=False)
        self._queue.put(job)
        return job

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise NotFoundError(f"job {job_id} does not exist (jobs are kept in memory until a restart)")
        return job

    def list(self) -> list[Job]:
        with self._lock:
            return list(reversed(self._jobs.values()))

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join(timeout=5)

    def _record(self, job: Job, result: FileResult) -> None:
        job.results.append(result)
        job.files_done += 1
        if self._on_result is not None:
            self._on_result(result)

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            job.state, job.started_at = "running", _now()
            try:
                self._run(job)
                job.state = "done"
            except Exception as error:  # the job fails, the worker goes on with the next one
                log.exception("ingest job %s failed", job.id)
                job.state, job.error = "failed", f"{type(error).__name__}: {error}"
            finally:
                job.finished_at = _now()
                if job.folder is not None:
                    shutil.rmtree(job.folder, ignore_errors=True)

    def _run(self, job: Job) -> None:
        sources = [Source(path, source_key(job.collection, name), name) for name, path in job.staged.items()]

        def progress(state: Progress) -> None:
            job.chunks_written = state.chunks_written

        def result(found: FileResult) -> None:
            if found.status in KEPT:
                keep(job.staged[found.path], found.path, self.upload_dir, job.collection)
            self._record(job, found)

        self._ingestor().ingest(sources, job.collection, on_result=result, on_progress=progress)

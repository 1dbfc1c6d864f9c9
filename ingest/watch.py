"""Folder sync (`archivist ingest PATH --watch`): keeps a collection in step with folders while files in them
are added, changed, renamed and deleted.

This module owns watching (watchdog, recursive), settling each path's burst of events (an editor's save or a
copy is many events; the path is ingested once it has been quiet for `SETTLE_SECONDS`), and turning every
group of settled paths into one run of the ingest pipeline: a path that is a file now is ingested, a folder
is walked, and a folder or a path that is gone is a prune root, so the documents of files no longer there
are deleted in the same run, before the new files are compared with what is stored. A rename is therefore
the old document removed and the new path added, never a "duplicate" of its own old self. A file left out
as a copy of another is ingested again when that other file changes or goes, since it may now hold the
only copy. The aim is the end state a restart (`sync()`, the same as `archivist ingest --prune`) gives.

A watched folder that disappears (deleted, moved away, unmounted) is reported and waited for, without
limit; events already seen are still applied. Once a folder with entries is back at its path, it is
watched again and synced in full. An empty folder in its place does not count as back yet: an unmounted
file system leaves its empty mount point behind, and syncing that would empty the collection.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import (
    EVENT_TYPE_CLOSED,
    EVENT_TYPE_CREATED,
    EVENT_TYPE_DELETED,
    EVENT_TYPE_MODIFIED,
    EVENT_TYPE_MOVED,
    FileSystemEvent,
    FileSystemEventHandler,
    FileSystemMovedEvent,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch

from ingest.loaders import is_supported
from ingest.pipeline import FileResult, Ingestor, IngestReport, Progress, Source, discover

log = logging.getLogger(__name__)

SETTLE_SECONDS = 1.0  # a path is ingested once no event has touched it for this long
FOLDER_CHECK_SECONDS = 0.5  # how often the watched folders are checked for having gone or come back
RETRY_SECONDS = 5.0  # after a run that failed as a whole (the database busy, say), its paths are retried
CHANGE_EVENTS = {
    EVENT_TYPE_CREATED,
    EVENT_TYPE_MODIFIED,
    EVENT_TYPE_CLOSED,
    EVENT_TYPE_DELETED,
    EVENT_TYPE_MOVED,
}
# watchdog >= 7.1.1 reports a kernel event-queue overflow with this type (earlier ones lose the events).
EVENTS_LOST = "events_lost"


class _Changes:
    """Changed paths, each due once it has settled; filled by watchdog's thread, emptied by the watcher's."""

    def __init__(self) -> None:
        self._due: dict[Path, float] = {}  # path → monotonic time at which it is handed out
        self._condition = threading.Condition()

    def add(self, paths: Iterable[Path], delay: float) -> None:
        due = time.monotonic() + delay
        with self._condition:
            for path in paths:
                self._due[path] = due
            self._condition.notify()

    def take_due(self, timeout: float) -> list[Path]:
        """The paths that are due (sorted), waiting up to `timeout` seconds for one to be."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while True:
                now = time.monotonic()
                due = sorted(path for path, at in self._due.items() if at <= now)
                if due or now >= deadline:
                    for path in due:
                        del self._due[path]
                    return due
                self._condition.wait(min([deadline, *self._due.values()]) - now)


class _FolderEvents(FileSystemEventHandler):
    """Turns the events of one watched folder into changed paths: hidden entries and files of unsupported
    types are ignored, as the folder walk ignores them; lost events mean the whole folder changed."""

    def __init__(self, folder: Path, changes: _Changes) -> None:
        self.folder = folder
        self.changes = changes
        self.folder_deleted = threading.Event()  # its watch ended with it, even if a new folder is there

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type == EVENTS_LOST:
            self.changes.add([self.folder], SETTLE_SECONDS)
            return
        if event.event_type not in CHANGE_EVENTS or (
            event.is_directory and event.event_type == EVENT_TYPE_MODIFIED
        ):
            return  # opened, read, attributes changed; a folder "modified" is one of its entries changing
        paths = (
            [event.src_path, event.dest_path] if isinstance(event, FileSystemMovedEvent) else [event.src_path]
        )
        changed = []
        for path in (Path(os.fsdecode(raw)) for raw in paths if raw):
            if path == self.folder:
                if event.event_type == EVENT_TYPE_DELETED:
                    self.folder_deleted.set()
            elif self._watched(path, event.is_directory):
                changed.append(path)
        if changed:
            self.changes.add(changed, SETTLE_SECONDS)

    def _watched(self, path: Path, is_directory: bool) -> bool:
        if not path.is_relative_to(self.folder):
            return False
        hidden = any(part.startswith(".") for part in path.relative_to(self.folder).parts)
        return not hidden and (is_directory or is_supported(path))


@dataclass
class _Folder:
    path: Path
    events: _FolderEvents
    identity: tuple[int, int] | None = None  # (device, inode) of the folder the watch is on
    watch: ObservedWatch | None = None
    gone: bool = False


class FolderWatcher:
    """Keeps `collection` in step with `folders`: `start()` watches them, `sync()` ingests them in full
    (call it after `start()`, so nothing changed meanwhile is missed), `run()` applies their changes as they
    settle until `stop()` or KeyboardInterrupt, `close()` ends the watching.

    `on_report` gets the report of every run that did something; `on_notice` gets a sentence about a folder
    that went or came back, or a run that failed as a whole (its paths are retried)."""

    def __init__(
        self,
        ingestor: Ingestor,
        folders: Sequence[Path],
        collection: str,
        on_report: Callable[[IngestReport], None],
        on_notice: Callable[[str], None],
    ) -> None:
        self.ingestor = ingestor
        self.collection = collection
        self.on_report = on_report
        self.on_notice = on_notice
        self._changes = _Changes()
        absolute = dict.fromkeys(Path(os.path.abspath(folder)) for folder in folders)
        self._folders = [_Folder(path, _FolderEvents(path, self._changes)) for path in absolute]
        self._observer: BaseObserver = Observer()
        self._stopped = threading.Event()
        # Files left out as copies of other documents: key → (the file, source paths of what they copy).
        self._copies: dict[str, tuple[Source, set[str]]] = {}

    def start(self) -> None:
        """Watch the folders; raises OSError when one cannot be watched (e.g. the inotify watch limit)."""
        self._observer.start()
        try:
            for folder in self._folders:
                self._watch(folder)
        except OSError:
            self.close()
            raise

    def sync(
        self,
        on_result: Callable[[FileResult], None] | None = None,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> IngestReport:
        """Ingest the folders in full and prune the documents of files gone from them, as `archivist ingest
        --prune` does: unchanged files are recognised by their content hash and not parsed again."""
        return self._ingest([folder.path for folder in self._folders], on_result, on_progress)

    def run(self) -> None:
        while not self._stopped.is_set():
            self._check_folders()
            paths = self._changes.take_due(FOLDER_CHECK_SECONDS)
            if paths:
                self._apply(paths)

    def stop(self) -> None:
        """Make `run()` return (from another thread) once the run in progress, if any, is done."""
        self._stopped.set()

    def close(self) -> None:
        self._observer.stop()
        self._observer.join()

    def _watch(self, folder: _Folder) -> None:
        if folder.watch is not None:
            self._observer.unschedule(folder.watch)
            folder.watch = None
        folder.events.folder_deleted.clear()
        folder.identity = _identity(folder.path)
        folder.watch = self._observer.schedule(folder.events, str(folder.path), recursive=True)

    def _check_folders(self) -> None:
        for folder in self._folders:
            identity = _identity(folder.path)
            if not folder.gone and identity == folder.identity and not folder.events.folder_deleted.is_set():
                continue
            if not folder.gone:
                folder.gone = True
                self.on_notice(
                    f"{folder.path} is gone (deleted, moved or unmounted); waiting for it to come back"
                )
            if identity is None or not _has_entries(folder.path):
                continue
            try:
                self._watch(folder)
            except OSError as error:
                log.warning("%s is back but cannot be watched yet: %s", folder.path, error)
                continue
            folder.gone = False
            self.on_notice(f"{folder.path} is back: syncing it in full")
            self._changes.add([folder.path], 0.0)

    def _apply(self, paths: list[Path]) -> None:
        try:
            report = self._ingest(paths)
        except Exception as error:  # one failed run must not end the watch
            log.exception("syncing %d changed path(s) failed", len(paths))
            self.on_notice(
                f"syncing {len(paths)} changed path(s) failed ({type(error).__name__}: {error}); "
                f"retrying in {RETRY_SECONDS:.0f} s"
            )
            self._changes.add(paths, RETRY_SECONDS)
            return
        if report.results or report.pruned:
            self.on_report(report)

    def _ingest(
        self,
        paths: Sequence[Path],
        on_result: Callable[[FileResult], None] | None = None,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> IngestReport:
        """One pipeline run for `paths` and, after them, the copies of what they held."""
        sources: list[Source] = []
        prune_roots: list[str] = []
        for path in paths:
            if path.is_file():
                sources.append(Source.of(path))
                continue
            if path.is_dir():
                sources += [Source.of(found) for found in discover([path])]
            prune_roots.append(Source.of(path).key)
        sources += self._copies_of({Source.of(path).key for path in paths})
        report = self.ingestor.ingest(sources, self.collection, on_result, prune_roots, on_progress)
        self._remember_copies(sources, report)
        return report

    def _copies_of(self, keys: set[str]) -> list[Source]:
        """Files left out as copies of documents of the files (or under the folders) named by `keys`."""
        # A document's source path is its file's key, or the key and '#record' for a file of many records.
        prefixes = tuple(key + separator for key in keys for separator in ("#", os.sep))
        return [
            source
            for source, originals in self._copies.values()
            if source.path.is_file() and any(o in keys or o.startswith(prefixes) for o in originals)
        ]

    def _remember_copies(self, sources: Sequence[Source], report: IngestReport) -> None:
        by_shown = {source.shown: source for source in sources}
        for result in report.results:
            source = by_shown[result.path]
            originals = {duplicate.of_source for duplicate in result.duplicates if duplicate.chunks == 0}
            if originals:
                self._copies[source.key] = (source, originals)
            else:
                self._copies.pop(source.key, None)


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the folder at `path`, None when there is none: a folder deleted and made again, or
    a mount point whose file system went away, is another folder."""
    try:
        status = path.stat()
    except OSError:
        return None
    return (status.st_dev, status.st_ino) if stat.S_ISDIR(status.st_mode) else None


def _has_entries(path: Path) -> bool:
    try:
        with os.scandir(path) as entries:
            return next(entries, None) is not None
    except OSError:
        return False

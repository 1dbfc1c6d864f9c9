"""Folder sync on a real folder, the real embedder, SQLite and FAISS: each added, edited, renamed and deleted
file is in SQL and in both indexes (dense and lexical search) within the 5 s target; a burst of writes is one
ingest; a copy keeps the text when its original goes; a restart catches up; a corrupt file fails alone; a
deleted watched folder is waited for; and `archivist ingest DIR --watch` itself, stopped by SIGTERM."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from typer.testing import CliRunner

from app.cli import cli
from ingest.config import ChunkerConfig
from ingest.pipeline import Ingestor, IngestReport
from ingest.watch import FolderWatcher
from retriever.embedder import Embedder
from retriever.store import KnowledgeBase
from tests.conftest import REPO_ROOT, make_settings

COLLECTION = "synced"
TARGET_SECONDS = 5.0  # from the file event to the change being searchable


@dataclass
class Watching:
    thread: threading.Thread
    reports: list[IngestReport]  # of the runs after the first sync
    notices: list[str]

    def results(self, name: str) -> list[str]:
        """The statuses the runs gave the file `name`, in order."""
        return [r.status for report in self.reports for r in report.results if Path(r.path).name == name]


@contextmanager
def watching(kb: KnowledgeBase, *folders: Path) -> Iterator[Watching]:
    """A watcher on `folders` that has synced them once and runs on a thread of its own."""
    reports: list[IngestReport] = []
    notices: list[str] = []
    watcher = FolderWatcher(
        Ingestor(kb, ChunkerConfig()), folders, COLLECTION, reports.append, notices.append
    )
    watcher.start()
    try:
        watcher.sync()
        thread = threading.Thread(target=watcher.run, name="folder-watcher")
        thread.start()
        try:
            yield Watching(thread, reports, notices)
        finally:
            watcher.stop()
            thread.join(timeout=30)
    finally:
        watcher.close()


def wait_for(condition: Callable[[], bool], seconds: float = TARGET_SECONDS) -> None:
    """Wait until `condition` holds; fail after `seconds`."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < seconds, f"not true within {seconds} s"
        time.sleep(0.1)


def documents(kb: KnowledgeBase, base: Path) -> dict[str, int]:
    """The collection's documents: path relative to `base` → id."""
    return {
        str(Path(document.source_path).relative_to(base)): document.id
        for document in kb.list_documents(COLLECTION)
    }


def found(kb: KnowledgeBase, word: str) -> set[str]:
    """The indexes that find `word`: BM25 when a lexical hit holds it; FAISS when a dense hit holds it and its
    indexed vector is the chunk's embedding in SQL (index score = SQL similarity). 10 hits cover every chunk
    of these small collections."""
    indexes = set()
    if any(word in hit.text for hit in kb.search(word, COLLECTION, 10, mode="lexical")):
        indexes.add("lexical")
    for hit in kb.search(word, COLLECTION, 10, mode="dense"):
        if word in hit.text and hit.similarity is not None and abs(hit.score - hit.similarity) < 1e-4:
            indexes.add("dense")
    return indexes


def in_step(
    kb: KnowledgeBase,
    base: Path,
    names: set[str],
    present: tuple[str, ...] = (),
    absent: tuple[str, ...] = (),
) -> Callable[[], bool]:
    """A check that SQL holds documents for exactly `names` and both indexes find the `present` words and
    neither finds the `absent` ones."""

    def check() -> bool:
        if set(documents(kb, base)) != names:
            return False
        return all(found(kb, word) == {"dense", "lexical"} for word in present) and not any(
            found(kb, word) for word in absent
        )

    return check


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_added_renamed_moved_and_deleted_files_are_searchable_within_the_target(
    kb: KnowledgeBase, tmp_path: Path
) -> None:
    folder = tmp_path / "notes"
    write(folder / "orchard.md", "# Orchard\n\nThe orchard on the hill grows apples and pears.")
    with watching(kb, folder):
        assert set(documents(kb, folder)) == {"orchard.md"}
        write(folder / "log.md", "The ferry captain sounded the horn at dawn.")
        wait_for(in_step(kb, folder, {"orchard.md", "log.md"}, present=("ferry",)))

        (folder / "log.md").rename(folder / "ferry.md")
        wait_for(in_step(kb, folder, {"orchard.md", "ferry.md"}, present=("ferry",)))
        (folder / "trips").mkdir()
        (folder / "ferry.md").rename(folder / "trips" / "ferry.md")
        wait_for(in_step(kb, folder, {"orchard.md", "trips/ferry.md"}, present=("ferry",)))
        (folder / "trips").rename(folder / "voyages")  # a renamed folder takes its documents along
        wait_for(in_step(kb, folder, {"orchard.md", "voyages/ferry.md"}, present=("ferry",)))

        (folder / "voyages" / "ferry.md").unlink()
        wait_for(in_step(kb, folder, {"orchard.md"}, present=("orchard",), absent=("ferry",)))


def test_an_edited_file_is_searchable_by_its_new_text_only_within_the_target(
    kb: KnowledgeBase, tmp_path: Path
) -> None:
    folder = tmp_path / "notes"
    write(folder / "log.md", "The lighthouse keeper lit the lamp at dusk.")
    write(folder / "orchard.md", "# Orchard\n\nThe orchard on the hill grows apples and pears.")
    with watching(kb, folder):
        first_id = documents(kb, folder)["log.md"]
        write(folder / "log.md", "The ferry captain sounded the horn at dawn.")
        wait_for(in_step(kb, folder, {"orchard.md", "log.md"}, present=("ferry",), absent=("lighthouse",)))
        assert documents(kb, folder)["log.md"] == first_id  # replaced in place


def test_an_edit_of_the_newest_file_is_searchable_by_its_new_text_only(
    kb: KnowledgeBase, tmp_path: Path
) -> None:
    folder = tmp_path / "notes"
    write(folder / "log.md", "The lighthouse keeper lit the lamp at dusk.")
    with watching(kb, folder):
        write(folder / "log.md", "The ferry captain sounded the horn at dawn.")
        wait_for(in_step(kb, folder, {"log.md"}, present=("ferry",), absent=("lighthouse",)))


def test_a_burst_of_writes_is_one_ingest_and_hidden_or_unsupported_files_are_ignored(
    kb: KnowledgeBase, tmp_path: Path
) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    with watching(kb, folder) as watch:
        path = folder / "draft.md"
        with path.open("w") as draft:  # an editor's save: many writes, then the close
            for line in range(30):
                draft.write(f"Line {line} of the glacier survey notes.\n")
                draft.flush()
                time.sleep(0.01)
        write(folder / ".draft.md.swp", "an editor's swap file")
        write(folder / "photo.heic", "not text")
        wait_for(in_step(kb, folder, {"draft.md"}, present=("glacier",)))
        time.sleep(1.5)  # longer than the settling time: a second run would have happened by now
        assert watch.results("draft.md") == ["added"]
        assert not watch.results(".draft.md.swp") and not watch.results("photo.heic")


def test_a_copy_keeps_its_text_when_the_original_goes(kb: KnowledgeBase, tmp_path: Path) -> None:
    folder = tmp_path / "notes"
    text = "The volcano on the island erupted twice in the last century, covering the village in ash."
    write(folder / "original.md", text)
    with watching(kb, folder) as watch:
        shutil.copy(folder / "original.md", folder / "copy.md")
        wait_for(lambda: watch.results("copy.md") == ["duplicate"])
        assert set(documents(kb, folder)) == {"original.md"}
        (folder / "original.md").unlink()
        wait_for(in_step(kb, folder, {"copy.md"}, present=("volcano",)))


def test_a_restart_catches_up_with_what_changed_while_nothing_watched(
    kb: KnowledgeBase, tmp_path: Path
) -> None:
    folder = tmp_path / "notes"
    write(folder / "kept.md", "The harbour master counts the boats.")
    write(folder / "edited.md", "The miller grinds wheat into flour.")
    write(folder / "deleted.md", "The shepherd walks the flock over the moor.")
    with watching(kb, folder):
        assert set(documents(kb, folder)) == {"kept.md", "edited.md", "deleted.md"}
    write(folder / "edited.md", "The baker bakes bread before sunrise.")
    (folder / "deleted.md").unlink()
    write(folder / "added.md", "The beekeeper collects honey in August.")
    with watching(kb, folder):
        names = {"kept.md", "edited.md", "added.md"}
        assert in_step(kb, folder, names, present=("baker", "beekeeper"), absent=("miller", "shepherd"))()


def test_a_corrupt_file_fails_alone_and_the_watch_goes_on(kb: KnowledgeBase, tmp_path: Path) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    with watching(kb, folder) as watch:
        (folder / "scan.pdf").write_bytes(b"%PDF-1.7\n1 0 obj << /Type /Catalog >> garbage")
        wait_for(lambda: watch.results("scan.pdf") == ["failed"])
        failure = next(r for report in watch.reports for r in report.results if r.path.endswith("scan.pdf"))
        assert failure.reason
        write(folder / "tides.md", "Tides rise and fall twice a day along the estuary.")
        wait_for(in_step(kb, folder, {"tides.md"}, present=("estuary",)))


def test_a_deleted_watched_folder_is_waited_for_while_the_others_are_still_watched(
    kb: KnowledgeBase, tmp_path: Path
) -> None:
    folder, other = tmp_path / "notes", tmp_path / "other"
    write(folder / "canal.md", "Barges carry coal along the canal.")
    write(other / "harbour.md", "The harbour master counts the boats.")
    with watching(kb, folder, other) as watch:
        shutil.rmtree(folder)
        wait_for(lambda: any("is gone" in notice for notice in watch.notices))
        write(other / "dock.md", "Cranes unload timber at the dock.")
        wait_for(in_step(kb, tmp_path, {"other/harbour.md", "other/dock.md"}, present=("timber",)))
        folder.mkdir()  # empty, as a mount point whose file system went away: not back yet
        time.sleep(1.0)
        assert watch.thread.is_alive() and not any("is back" in notice for notice in watch.notices)
        write(folder / "bridge.md", "The old stone bridge spans the river gorge.")
        names = {"other/harbour.md", "other/dock.md", "notes/bridge.md"}
        wait_for(in_step(kb, tmp_path, names, present=("gorge",), absent=("canal",)))
        assert any("is back" in notice for notice in watch.notices)
        write(folder / "weir.md", "Salmon leap the weir in autumn.")  # watched again
        wait_for(in_step(kb, tmp_path, names | {"notes/weir.md"}, present=("weir",)))


def test_the_cli_watches_until_sigterm(tmp_path: Path, embedder: Embedder) -> None:
    folder = tmp_path / "notes"
    write(folder / "moon.md", "# The Moon\n\nThe Moon orbits the Earth every 27.3 days.")
    data_dir = tmp_path / "data"
    env = {**os.environ, "ARCHIVIST_DATA_DIR": str(data_dir)}
    command = [sys.executable, "-m", "app.cli", "ingest", str(folder), "--watch", "-c", COLLECTION]
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout or ()), daemon=True)
    reader.start()
    reader_kb = KnowledgeBase(make_settings(data_dir).retriever_config(), embedder)
    try:
        wait_for(lambda: any("watching" in line for line in lines), seconds=120)
        assert set(documents(reader_kb, folder)) == {"moon.md"}
        write(folder / "sun.md", "The Sun is a yellow dwarf star at the centre of the solar system.")
        (folder / "broken.pdf").write_bytes(b"%PDF-1.7 not really")
        wait_for(in_step(reader_kb, folder, {"moon.md", "sun.md"}, present=("dwarf",)))
        wait_for(lambda: any("failed:" in line and "broken.pdf" in line for line in lines))
        assert process.poll() is None
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, "".join(lines)
        reader.join(timeout=5)
        assert "stopped" in lines[-1]
        assert any("added:" in line and "sun.md" in line for line in lines)
    finally:
        reader_kb.close()
        if process.poll() is None:
            process.kill()


def test_the_cli_watches_folders_only(tmp_path: Path) -> None:
    path = write(tmp_path / "one.md", "A single file cannot be watched.")
    result = CliRunner().invoke(cli, ["ingest", str(path), "--watch"])
    assert result.exit_code == 2 and "--watch takes folders, not files" in result.output
